"""The routes clients call: every vLLM route whose body names a model (OpenAI's API,
Anthropic's Messages API, audio, pooling; MODEL_ROUTES), relayed to the model's engine or
upstream, the Responses API's routes by response id, and `/v1/models`. A request is refused
before it waits where it must be (no model, a route its engine's vLLM lacks, a switch that
switch_on_demand forbids, VRAM or KV pressure), else queued for a slot. One whose engine
turns out to have died before the request reached it queues again, once, for the restart
(gateway/relay.py). Errors leave in the shape of the route's API (gateway/dialects.py).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from animllm_cli.engine import vllm_routes
from animllm_cli.gateway import accounting, guard
from animllm_cli.gateway.accounting import Accounted, waited_since
from animllm_cli.gateway.app import PRIORITY_LIMIT, Gateway, guarded
from animllm_cli.gateway.clients import Client
from animllm_cli.gateway.deadlines import Deadlines, Expired
from animllm_cli.gateway.forms import form_fields
from animllm_cli.gateway.guard import Refused, error
from animllm_cli.gateway.relay import (SENT_AT, ClientGone, EngineRestarting, Target, WaitingStream, forward,
                                      race_disconnect, relay_by_id)
from animllm_cli.gateway.scheduler import ANYONE, Claimant, Lease, QueueFull, SwitchFailed

# vLLM's POST routes whose body names the model that answers, in any release read
# (engine/vllm_routes.json, from vLLM's own code; tests/gateway/test_routes_clients.py holds
# every POST route of every release to these lists or to NOT_MODEL_ROUTES).
JSON_ROUTES = (
    "/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens",
    "/v1/embeddings", "/v1/rerank", "/rerank", "/v2/rerank", "/v1/score", "/score", "/pooling", "/classify",
    "/tokenize", "/detokenize", "/v1/chat/completions/batch", "/generative_scoring", "/inference/v1/generate",
    # the prompt as the engine would render it, and back (vLLM 0.15 on)
    "/v1/chat/completions/render", "/v1/completions/render", "/v1/messages/render", "/v1/responses/render",
    "/v1/chat/completions/derender", "/v1/completions/derender",
    "/cohere/v2/chat", "/cohere/v2/chat/render", "/v2/embed",   # Cohere's API (vLLM 0.18 on)
    "/invocations",                                              # SageMaker's: any of the above, by its body
    "/v1/decisions", "/v1/systemone")                            # structured decisions (vLLM 0.32 on)
FORM_ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations")  # multipart: the file, and `model` beside it
# The engine's own controls: never reachable through the gateway (they name no model, and
# change the engine for every client: weights, LoRA adapters, profiling, scaling).
NOT_MODEL_ROUTES = frozenset({
    "/abort_requests", "/inference/v1/abort_requests", "/collective_rpc", "/fault_tolerance/apply",
    "/finish_weight_update", "/init_weight_transfer_engine", "/start_weight_update", "/update_weight_version",
    "/update_weights", "/weight_checker", "/scale_elastic_ep", "/start_profile", "/stop_profile",
    "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/sleep", "/wake_up", "/reset_prefix_cache",
    "/reset_mm_cache", "/reset_encoder_cache", "/pause", "/resume", "/release_kv_cache_memory"})
FORM_MEDIA = ("multipart/form-data",)
RESPONSES = "/v1/responses"
USAGE_STREAMS = ("/v1/chat/completions", "/v1/completions")  # their streams carry usage only when asked


@dataclass
class Incoming:
    """What routing reads of a request to a model-addressed route."""
    raw: bytes
    requested: Any                       # the body's `model`, as sent
    stream: bool
    priority: float | None               # what the request asked (None: its client's own)
    rename: Callable[[str], bytes]       # the body naming another model (and without its priority field)
    previous_response: str | None = None  # the Responses API's previous_response_id
    stored: bool = False                  # a Responses request that asks to store its answer (`store`, true by default)
    strip_usage: bool = False             # the usage chunk was asked for the client's usage record, not by it


def request_priority(request: Request, payload: dict[str, Any]) -> tuple[float | None, bool]:
    """From a `priority` field (removed: vLLM rejects it unless it runs priority
    scheduling) or the X-Priority header. A number within +-PRIORITY_LIMIT; anything else
    is a 400. Returns (priority, None where none was asked; body changed)."""
    if "priority" in payload:
        value, changed, where = payload.pop("priority"), True, "the priority field"
    else:
        value, changed, where = request.headers.get("x-priority"), False, "X-Priority"
    if value is None:
        return None, changed
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not -PRIORITY_LIMIT <= number <= PRIORITY_LIMIT:  # NaN fails both comparisons
        raise Refused(error(400, f"{where} must be a number from -{PRIORITY_LIMIT} to {PRIORITY_LIMIT}, "
                                 f"got {str(value)[:40]!r}", param="priority"), "bad_priority")
    return number, changed


async def read_json(request: Request, gw: Gateway) -> Incoming:
    raw = await guard.read_body(request, gw.max_body_bytes)
    payload = guard.parse_object(raw)
    priority, changed = request_priority(request, payload)
    path = guard.path_of(request)
    strip_usage = gw.clients.configured and _usage_asked_for_the_record(path, payload)
    changed = changed or strip_usage

    def rename(name: str) -> bytes:
        return json.dumps({**payload, "model": name}).encode()

    responses = path == RESPONSES
    previous = payload.get("previous_response_id") if responses else None
    return Incoming(json.dumps(payload).encode() if changed else raw, payload.get("model"),
                    payload.get("stream") is True, priority, rename, previous if isinstance(previous, str) else None,
                    stored=responses and payload.get("store") is not False, strip_usage=strip_usage)


def _usage_asked_for_the_record(path: str, payload: dict[str, Any]) -> bool:
    """A streamed chat or completion that does not ask for its usage chunk: asked here (in
    `payload`), so that its client's tokens are counted; True when it was."""
    options = payload.get("stream_options")
    if path not in USAGE_STREAMS or payload.get("stream") is not True:
        return False
    if options is not None and not isinstance(options, dict):  # vLLM refuses it: left as sent
        return False
    if (options or {}).get("include_usage"):
        return False
    payload["stream_options"] = {**(options or {}), "include_usage": True}
    return True


async def read_form(request: Request, gw: Gateway) -> Incoming:
    """A multipart form (the audio routes): read within the body limit, its model from its
    `model` field, its priority from X-Priority only."""
    raw = await guard.read_body(request, gw.max_body_bytes)
    fields = form_fields(raw, request.headers.get("content-type", ""))
    priority, _ = request_priority(request, {})
    return Incoming(raw, fields.values.get("model"), fields.values.get("stream", "").lower() == "true", priority,
                    lambda name: fields.with_model(raw, name))


def model_route(read: Callable) -> Callable:
    async def route(request: Request, gw: Gateway) -> Response:
        deadlines = Deadlines.from_arrival(gw.bounds)  # the upload counts against request_timeout_s
        return await relay(request, gw, await read(request, gw), deadlines)
    return route


async def relay(request: Request, gw: Gateway, incoming: Incoming, deadlines: Deadlines) -> Response:
    arrived = time.monotonic()
    requested = incoming.requested
    if not isinstance(requested, str) or not requested:
        raise Refused(error(400, "the request needs a `model` (a model name, alias or task)", param="model"),
                      "no_model")
    model = gw.resolve(requested)
    if model is None:
        raise gw.not_found(requested)
    client = client_of(request, gw)
    admit_client(gw, client, model)
    loading = gw.needs_load(model)  # at arrival: a switch ahead
    try:
        response = await _relay(request, gw, incoming, deadlines, model, client)
    except Refused as refused:  # turned away before it waited: in its client's record too
        if gw.clients.configured:
            accounting.record(gw.clients, gw.metrics, client, model, f"http_{refused.response.status_code}")
        raise
    if not gw.clients.configured:
        return response
    waited = waited_since(arrived, loading, lambda: getattr(request.state, SENT_AT, None))
    if isinstance(getattr(response, "body", None), bytes):  # a whole answer (or an error): counted now, passed as it is
        accounting.record_answer(gw.clients, gw.metrics, client, model, response, waited())
        return response
    return Accounted(response, gw.clients, gw.metrics, client, model, waited, incoming.strip_usage)


def client_of(request: Request, gw: Gateway) -> Client:
    """The client the guard found the request to be from."""
    return getattr(request.state, "client", None) or gw.clients.anonymous


def admit_client(gw: Gateway, client: Client, model: str) -> None:
    """Refused before it waits: a model the client may not use (403), a rate it has used up (429)."""
    if not client.may_use(model):
        refused, outcome = Refused(error(403, f"client '{client.name}' may not use model '{model}' (its `models` in "
                                              f"clients: name what it may)", "permission_error", param="model",
                                         code="model_not_allowed"), "client_model"), "forbidden"
    elif (wait_s := client.limited_s()) > 0:
        limits = f"{client.spec.requests_per_minute or '-'} requests, {client.spec.tokens_per_minute or '-'} tokens"
        refused, outcome = Refused(error(429, f"client '{client.name}' is over its rate ({limits} a minute): try "
                                              f"again in {wait_s:.1f} s", "rate_limit_error", code="rate_limited",
                                         retry_after=wait_s), "client_rate"), "rate_limited"
    else:
        if client.requests is not None:
            client.requests.take(1)
        return
    if gw.clients.configured:
        accounting.record(gw.clients, gw.metrics, client, model, outcome)
    raise refused


async def _relay(request: Request, gw: Gateway, incoming: Incoming, deadlines: Deadlines, model: str,
                 client: Client) -> Response:
    requested = incoming.requested
    renamed = gw.request_name(requested, model)
    raw = incoming.rename(renamed) if renamed else incoming.raw
    remote = gw.upstreams.get(model)
    if remote is not None:
        _admit_remote(model, remote.key_problem)
    else:
        _admit_route(gw, model, guard.path_of(request))
        admit_local(gw, model)
        _admit_previous_response(gw, model, incoming.previous_response)
    if incoming.stored:
        request.state.answer_watch = gw.stored_responses.watcher
    stream, priority, claimant = incoming.stream, client.priority(incoming.priority), client.claimant
    lease = gw.scheduler.try_acquire(model, claimant)
    loading = gw.needs_load(model)
    if lease is None and stream and loading:
        return _waiting_stream(gw, request, model, raw, priority, deadlines, claimant)
    if lease is None:
        lease = await wait_for_slot(gw, request, model, priority, deadlines, claimant)
        if isinstance(lease, Response):
            return lease
    return await _answer(gw, request, model, lease, raw, stream, priority, deadlines, claimant)


async def _answer(gw: Gateway, request: Request, model: str, lease: Lease, raw: bytes, stream: bool,
                  priority: float, deadlines: Deadlines, claimant: Claimant) -> Response:
    """Relay the request on its slot. Should its engine turn out to have died before the
    request reached it, the request waits for the restart as one that arrives during a
    switch does (a stream hears what it waits for), and is sent again, once."""
    try:
        return await forward(gw, request, model, lease, raw, stream, deadlines)
    except EngineRestarting:
        if stream:
            return _waiting_stream(gw, request, model, raw, priority, deadlines, claimant, rejoined=True)
        queued = await wait_for_slot(gw, request, model, priority, deadlines, claimant)
        if isinstance(queued, Response):
            return queued
        return await forward(gw, request, model, queued, raw, stream, deadlines, rejoined=True)


def _waiting_stream(gw: Gateway, request: Request, model: str, raw: bytes, priority: float,
                    deadlines: Deadlines, claimant: Claimant, *, rejoined: bool = False) -> Response:
    """A stream with a load (or a restart) ahead: answered now, saying what it waits for
    while it waits; or refused at once where its wait would fail at once. `rejoined`: it
    waits for a restart already."""
    refused = _refusal(gw, model, claimant)
    if refused is not None:
        return refused
    return WaitingStream(gw, request, model, lambda: _acquire(gw, model, priority, deadlines, claimant), raw, deadlines,
                         lambda: gw.waiting_for(model), gw.loading_comment_s, rejoined)


def _admit_remote(model: str, key_problem: str | None) -> None:
    """A model served elsewhere: never loaded here and no VRAM of ours, so only its key matters."""
    if key_problem:
        raise Refused(error(503, f"model '{model}' is served elsewhere and {key_problem}", "engine_unavailable"),
                      "upstream_key")


def _admit_route(gw: Gateway, model: str, path: str) -> None:
    """A route the engine's vLLM release does not have: a 404 naming the release that brought
    it, rather than a relay to nowhere (a version outside the table is left to vLLM)."""
    served, version = gw.served_routes, gw.vllm_version
    if served is None or path in served:
        return
    first = vllm_routes.first_release_with(path)
    since = f"it came in vLLM {first}" if first else "no vLLM release read serves it"
    raise Refused(error(404, f"vLLM {version}, which runs '{model}', has no {path}: {since}; upgrade the vLLM "
                             f"of the engine's Python (engine.python)", code="route_not_in_release"), "route")


def _admit_previous_response(gw: Gateway, model: str, previous: str | None) -> None:
    """A `previous_response_id` held by an engine that is gone, or by another model: said so
    here (the engine would only say it does not know the id)."""
    holder = gw.stored_responses.holder(previous) if previous else None
    if holder is None:
        return
    if holder.model != model:
        raise Refused(error(400, f"previous_response_id {previous} was made by '{holder.model}', not '{model}': "
                                 f"a response is kept by the engine that made it", param="previous_response_id"),
                      "previous_response")
    if holder.engine is not None and holder.engine() is not gw.pool.live_engine(model):
        raise Refused(_response_gone(previous, holder.model), "previous_response")


def _response_gone(response_id: str, model: str) -> Response:
    return error(404, f"response {response_id} was stored by the engine of '{model}', which has stopped since "
                      f"(unloaded, evicted or restarted): an engine keeps its responses in memory only",
                 code="response_gone")


def admit_local(gw: Gateway, model: str) -> None:
    """Refused before it waits: a switch that switch_on_demand forbids, or VRAM/KV pressure."""
    residents = gw.pool.models
    if not gw.switch_on_demand and residents and model not in residents and model not in gw.pool.restarting:
        raise Refused(error(409, f"model '{model}' is not loaded ({', '.join(residents)} is) and switch_on_demand "
                                 f"is off", "model_not_loaded", param="model", code="model_not_loaded"), "not_loaded")
    busy = gw.verdict.reason(model, resident=model in residents)
    if busy:
        raise Refused(error(503, f"busy: {busy}", "server_busy", retry_after=5), "pressure")


async def _acquire(gw: Gateway, model: str, priority: float, deadlines: Deadlines, claimant: Claimant) -> Lease:
    """A slot on `model` (loading it if needed), within queue_timeout_s."""
    gw.metrics.queue_depth.set(gw.scheduler.depth + 1)
    try:
        return await deadlines.within(gw.scheduler.acquire(model, priority, claimant=claimant), gw.bounds.queue_s,
                                      f"no slot for '{model}' within queue_timeout_s")
    finally:
        gw.metrics.queue_depth.set(gw.scheduler.depth)


async def wait_for_slot(gw: Gateway, request: Request, model: str, priority: float, deadlines: Deadlines,
                        claimant: Claimant = ANYONE) -> Lease | Response:
    """Wait for a slot on `model` (loading it if needed), unless the client goes away."""
    try:
        return await race_disconnect(request.receive, _acquire(gw, model, priority, deadlines, claimant),
                                     discard=lambda lease: lease.release())
    except (QueueFull, SwitchFailed, ClientGone, Expired) as exc:
        return gw.queue_failure(model, exc)


def _refusal(gw: Gateway, model: str, claimant: Claimant) -> Response | None:
    """What a wait for `model` would fail with at once (a full queue, a backoff), as a response."""
    try:
        gw.scheduler.check(model, claimant)
    except (QueueFull, SwitchFailed) as exc:
        return gw.queue_failure(model, exc)
    return None


async def stored_response(request: Request, gw: Gateway) -> Response:
    """`GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`: sent to the engine that
    stored the response, if it still runs."""
    response_id = request.path_params["response_id"]
    holder = gw.stored_responses.holder(response_id)
    if holder is None:
        return error(404, f"response {response_id} is not known to this gateway (it remembers the newest "
                          f"{gw.stored_responses.limit:,} responses stored through it)", code="response_not_found")
    if holder.url is not None:  # stored by a server elsewhere: asked there
        target = gw.target_at(holder.model, holder.url)
        if target is None:
            return error(404, f"response {response_id} was stored at {holder.url}, which '{holder.model}' no longer "
                              f"names (the config changed)", code="response_gone")
        return await relay_by_id(gw, request, target)
    engine = holder.engine() if holder.engine is not None else None
    if engine is None or engine is not gw.pool.live_engine(holder.model):  # asleep, it keeps them
        return _response_gone(response_id, holder.model)
    return await relay_by_id(gw, request, Target(engine.base_url, engine.headers, f"the engine for '{holder.model}'",
                                                 engine=engine))


@guarded
async def models(request: Request, gw: Gateway) -> Response:
    residents, client = gw.pool.models, client_of(request, gw)
    data = [{"id": name, "object": "model", "created": int(gw.started_at), "owned_by": "animllm",
             "loaded": name in residents or name in gw.upstreams, "aliases": spec.aliases, "tasks": spec.tasks,
             "serves": gw.serves(name), "source": spec.source, "remote": spec.remote}
            for name, spec in gw.loaded.config.models.items() if client.may_use(name)]
    return JSONResponse({"object": "list", "data": data})


_JSON = guarded(model_route(read_json))
_FORM = guarded(model_route(read_form), media=FORM_MEDIA)
_STORED = guarded(stored_response, media=("application/json", ""))  # a cancel may come without a body

ROUTES = [*(Route(path, _JSON, methods=["POST"]) for path in JSON_ROUTES),
          *(Route(path, _FORM, methods=["POST"]) for path in FORM_ROUTES),
          Route("/v1/responses/{response_id}", _STORED, methods=["GET"]),
          Route("/v1/responses/{response_id}/cancel", _STORED, methods=["POST"]),
          Route("/v1/models", models)]

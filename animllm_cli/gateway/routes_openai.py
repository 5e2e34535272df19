"""The routes clients call: the OpenAI API, relayed to the model's engine or upstream
(`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/tokenize`, `/detokenize`),
and `/v1/models`. A request is refused before it waits where it must be (no model, a
switch that switch_on_demand forbids, VRAM or KV pressure), else queued for a slot. One
whose engine turns out to have died before the request reached it queues again, once, for
the restart (gateway/relay.py).
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from animllm_cli.gateway import guard
from animllm_cli.gateway.app import PRIORITY_LIMIT, Gateway, guarded
from animllm_cli.gateway.deadlines import Deadlines, Expired
from animllm_cli.gateway.guard import Refused, error
from animllm_cli.gateway.relay import ClientGone, EngineRestarting, WaitingStream, forward, race_disconnect
from animllm_cli.gateway.scheduler import Lease, QueueFull, SwitchFailed

RELAYED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize")


def request_priority(request: Request, payload: dict[str, Any]) -> tuple[float, bool]:
    """From a `priority` field (removed: vLLM rejects it unless it runs priority
    scheduling) or the X-Priority header. A number within +-PRIORITY_LIMIT; anything else
    is a 400. Returns (priority, body changed)."""
    if "priority" in payload:
        value, changed, where = payload.pop("priority"), True, "the priority field"
    else:
        value, changed, where = request.headers.get("x-priority"), False, "X-Priority"
    if value is None:
        return 0.0, changed
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not -PRIORITY_LIMIT <= number <= PRIORITY_LIMIT:  # NaN fails both comparisons
        raise Refused(error(400, f"{where} must be a number from -{PRIORITY_LIMIT} to {PRIORITY_LIMIT}, "
                                 f"got {str(value)[:40]!r}", param="priority"), "bad_priority")
    return number, changed


@guarded
async def proxy(request: Request, gw: Gateway) -> Response:
    deadlines = Deadlines.from_arrival(gw.bounds)
    raw = await guard.read_body(request, gw.max_body_bytes)
    payload = guard.parse_object(raw)
    requested = payload.get("model")
    if not isinstance(requested, str) or not requested:
        raise Refused(error(400, "the request needs a `model` (a model name, alias or task)", param="model"),
                      "no_model")
    model = gw.resolve(requested)
    if model is None:
        raise gw.not_found(requested)
    priority, changed = request_priority(request, payload)
    renamed = gw.request_name(requested, model)
    if changed or renamed:
        payload["model"] = renamed or requested
        raw = json.dumps(payload).encode()
    remote = gw.upstreams.get(model)
    if remote is not None:
        _admit_remote(model, remote.key_problem)
    else:
        _admit_local(gw, model)
    stream = payload.get("stream") is True
    lease = gw.scheduler.try_acquire(model)
    loading = remote is None and (model not in gw.pool.models or model in gw.scheduler.draining)
    if lease is None and stream and loading:
        return _waiting_stream(gw, request, model, raw, priority, deadlines)
    if lease is None:
        lease = await _queue(gw, request, model, priority, deadlines)
        if isinstance(lease, Response):
            return lease
    return await _answer(gw, request, model, lease, raw, stream, priority, deadlines)


async def _answer(gw: Gateway, request: Request, model: str, lease: Lease, raw: bytes, stream: bool,
                  priority: float, deadlines: Deadlines) -> Response:
    """Relay the request on its slot. Should its engine turn out to have died before the
    request reached it, the request waits for the restart as one that arrives during a
    switch does (a stream hears what it waits for), and is sent again, once."""
    try:
        return await forward(gw, request, model, lease, raw, stream, deadlines)
    except EngineRestarting:
        if stream:
            return _waiting_stream(gw, request, model, raw, priority, deadlines, rejoined=True)
        queued = await _queue(gw, request, model, priority, deadlines)
        if isinstance(queued, Response):
            return queued
        return await forward(gw, request, model, queued, raw, stream, deadlines, rejoined=True)


def _waiting_stream(gw: Gateway, request: Request, model: str, raw: bytes, priority: float,
                    deadlines: Deadlines, *, rejoined: bool = False) -> Response:
    """A stream with a load (or a restart) ahead: answered now, saying what it waits for
    while it waits; or refused at once where its wait would fail at once. `rejoined`: it
    waits for a restart already."""
    refused = _refusal(gw, model)
    if refused is not None:
        return refused
    return WaitingStream(gw, request, model, lambda: _acquire(gw, model, priority, deadlines), raw, deadlines,
                         lambda: gw.waiting_for(model), gw.loading_comment_s, rejoined)


def _admit_remote(model: str, key_problem: str | None) -> None:
    """A model served elsewhere: never loaded here and no VRAM of ours, so only its key matters."""
    if key_problem:
        raise Refused(error(503, f"model '{model}' is served elsewhere and {key_problem}", "engine_unavailable"),
                      "upstream_key")


def _admit_local(gw: Gateway, model: str) -> None:
    """Refused before it waits: a switch that switch_on_demand forbids, or VRAM/KV pressure."""
    residents = gw.pool.models
    if not gw.switch_on_demand and residents and model not in residents and model not in gw.pool.restarting:
        raise Refused(error(409, f"model '{model}' is not loaded ({', '.join(residents)} is) and switch_on_demand "
                                 f"is off", "model_not_loaded", param="model", code="model_not_loaded"), "not_loaded")
    busy = gw.verdict.reason(model, resident=model in residents)
    if busy:
        raise Refused(error(503, f"busy: {busy}", "server_busy", retry_after=5), "pressure")


async def _acquire(gw: Gateway, model: str, priority: float, deadlines: Deadlines) -> Lease:
    """A slot on `model` (loading it if needed), within queue_timeout_s."""
    gw.metrics.queue_depth.set(gw.scheduler.depth + 1)
    try:
        return await deadlines.within(gw.scheduler.acquire(model, priority), gw.bounds.queue_s,
                                      f"no slot for '{model}' within queue_timeout_s")
    finally:
        gw.metrics.queue_depth.set(gw.scheduler.depth)


async def _queue(gw: Gateway, request: Request, model: str, priority: float, deadlines: Deadlines) -> Lease | Response:
    """Wait for a slot on `model` (loading it if needed), unless the client goes away."""
    try:
        return await race_disconnect(request.receive, _acquire(gw, model, priority, deadlines),
                                     discard=lambda lease: lease.release())
    except (QueueFull, SwitchFailed, ClientGone, Expired) as exc:
        return gw.queue_failure(model, exc)


def _refusal(gw: Gateway, model: str) -> Response | None:
    """What a wait for `model` would fail with at once (a full queue, a backoff), as a response."""
    try:
        gw.scheduler.check(model)
    except (QueueFull, SwitchFailed) as exc:
        return gw.queue_failure(model, exc)
    return None


@guarded
async def models(request: Request, gw: Gateway) -> Response:
    residents = gw.pool.models
    data = [{"id": name, "object": "model", "created": int(gw.started_at), "owned_by": "animllm",
             "loaded": name in residents or name in gw.upstreams, "aliases": spec.aliases, "tasks": spec.tasks,
             "source": spec.source, "remote": spec.remote}
            for name, spec in gw.loaded.config.models.items()]
    return JSONResponse({"object": "list", "data": data})


ROUTES = [*(Route(path, proxy, methods=["POST"]) for path in RELAYED), Route("/v1/models", models)]

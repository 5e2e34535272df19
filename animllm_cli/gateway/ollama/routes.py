"""The Ollama routes. Generation and embeddings go through the same relay as the OpenAI
routes (admission, priority, deadlines, the body limit, the key, a crash's retry), as the
engine's OpenAI request (requests.py); the rest is answered here. Errors leave as Ollama's
`{"error": "..."}` (gateway/dialects.py); a route with no meaning in animllm (models made
from Modelfiles, copied, deleted, pushed, their blobs) answers 501 saying what to do instead.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from animllm_cli.gateway import guard
from animllm_cli.gateway.app import Gateway, guarded
from animllm_cli.gateway.deadlines import Deadlines
from animllm_cli.gateway.guard import Refused, error
from animllm_cli.gateway.ollama.answers import NDJSON, Folding, OllamaReply, Timing, created_at, ollama_error
from animllm_cli.gateway.ollama.models import describe
from animllm_cli.gateway.ollama.pulls import pull_progress
from animllm_cli.gateway.ollama.requests import (BadRequest, EngineCall, chat_call, embed_call, generate_call,
                                                 is_empty, keep_alive_s)
from animllm_cli.gateway.relay import SENT_AT
from animllm_cli.gateway.routes_clients import (Incoming, admit_client, admit_local, client_of, relay,
                                                request_priority, wait_for_slot)

OLLAMA_VERSION = "0.33.0"  # the release of Ollama's API these routes follow (docs/api.md, api/types.go)
# What Ollama's clients send: JSON, though curl's `-d` labels it a form (a page's form is
# held to the same-origin rule: gateway/guard.py).
API_MEDIA = ("application/json", "application/x-www-form-urlencoded", "text/plain", "")
FOREVER_YEARS = 290  # Ollama's expires_at for a model kept forever: now plus Go's longest duration


def _keep_alive(request: Request, gw: Gateway, payload: dict[str, Any]) -> float | None:
    """The request's keep_alive in seconds (None: not given). Where clients are configured,
    only an admin's counts: it keeps a model loaded for, or unloads it from, every client."""
    keep = keep_alive_s(payload.get("keep_alive"))
    return keep if not gw.clients.configured or client_of(request, gw).admin else None


def _bad(message: str, status: int = 400) -> Refused:
    return Refused(error(status, message), "ollama_request")


async def _read(request: Request, gw: Gateway) -> tuple[dict[str, Any], str, str]:
    """The body, the model as the client named it, and the configured model it is."""
    raw = await guard.read_body(request, gw.max_body_bytes)
    if not raw.strip():
        raise _bad("missing request body")
    payload = guard.parse_object(raw)
    requested = payload.get("model") or payload.get("name")  # `name`: older clients' (Continue's /api/show)
    if not isinstance(requested, str) or not requested:
        raise _bad("model is required")
    payload["model"] = requested
    model = gw.resolve(requested) or (gw.resolve(requested.removesuffix(":latest"))
                                      if requested.endswith(":latest") else None)
    if model is None:
        raise Refused(error(404, f"model '{requested}' not found; animllm serves the models its config names: "
                                 f"{', '.join(gw.catalogue.available())}", code="model_not_found"), "unknown_model")
    if not client_of(request, gw).may_use(model):
        admit_client(gw, client_of(request, gw), model)  # refused, and so recorded
    return payload, requested, model


def _engine_request(request: Request, path: str) -> Request:
    """The request as the relay sends it on: to the engine's route, as JSON. It shares the
    client's connection (a client gone is seen) and its state (the relay notes there when it
    sent it: answers.py reads the timing)."""
    request.state  # noqa: B018 - makes the scope's state, which the copy shares
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    scope = {**request.scope, "path": path, "raw_path": path.encode(),
             "headers": [*headers, (b"content-type", b"application/json")]}
    return Request(scope, request.receive)


def _incoming(request: Request, payload: dict[str, Any], call: EngineCall, model: str) -> Incoming:
    body = {**call.body, "model": model}
    priority, _ = request_priority(request, payload)
    return Incoming(json.dumps(body).encode(), model, call.path != "/v1/embeddings", priority,
                    lambda name: json.dumps({**body, "model": name}).encode())


async def _generation(request: Request, gw: Gateway, kind: str) -> Response:
    arrived = time.monotonic_ns()
    deadlines = Deadlines.from_arrival(gw.bounds)
    payload, requested, model = await _read(request, gw)
    described = describe(gw.loaded, model, gw.started_at)
    try:
        keep = _keep_alive(request, gw, payload)
        if is_empty(payload, kind):
            return await _load_or_unload(request, gw, payload, requested, model, kind, keep, deadlines)
        if "embedding" in described.capability_names():
            raise BadRequest(f'"{requested}" does not support {kind} (it is an embedding model: /api/embed)')
        capabilities = described.capabilities()
        call = (chat_call if kind == "chat" else generate_call)(payload, capabilities, requested)
    except BadRequest as exc:
        raise _bad(str(exc)) from None
    if described.view.remote and call.body.get("chat_template_kwargs") == {"enable_thinking": False}:
        del call.body["chat_template_kwargs"]  # turning thinking off asks nothing of a server that may not be vLLM
    folding = Folding(kind, requested, Timing(arrived, gw.needs_load(model)))
    engine_request = _engine_request(request, call.path)
    answer = await relay(engine_request, gw, _incoming(request, payload, call, model), deadlines)
    return OllamaReply(answer, folding, engine_request, call.stream,
                       on_end=lambda: gw.pool.give_keep_alive(model, keep))


async def _load_or_unload(request: Request, gw: Gateway, payload: dict[str, Any], requested: str, model: str,
                          kind: str, keep: float | None, deadlines: Deadlines) -> Response:
    """A request with nothing to answer: it loads its model, or with keep_alive 0 unloads it."""
    local = gw.upstreams.get(model) is None
    if keep == 0:
        if local and gw.pool.pinned(model):
            raise Refused(error(409, f"'{requested}' is pinned (pin: true in animllm's config): a client's "
                                     f"keep_alive never unloads it", code="model_pinned"), "ollama_request")
        if local:  # once what runs on it has finished; the answer does not wait for that (as Ollama)
            gw.scheduler.request_unload(model, "unload")
        reason = "unload"
    else:
        if gw.needs_load(model):
            admit_local(gw, model)  # a load a client asks for is a switch on demand
            asked, _ = request_priority(request, payload)
            client = client_of(request, gw)
            lease = await wait_for_slot(gw, request, model, client.priority(asked), deadlines, client.claimant)
            if isinstance(lease, Response):
                return lease
            lease.release()
        elif local:  # loaded already: it stays, from now
            gw.scheduler.touch(model)
        if local:
            gw.pool.give_keep_alive(model, keep)
        reason = "load"
    said = {"message": {"role": "assistant", "content": ""}} if kind == "chat" else {"response": ""}
    return JSONResponse({"model": requested, "created_at": created_at(), **said, "done": True, "done_reason": reason})


async def chat(request: Request, gw: Gateway) -> Response:
    return await _generation(request, gw, "chat")


async def generate(request: Request, gw: Gateway) -> Response:
    return await _generation(request, gw, "generate")


async def _embeddings(request: Request, gw: Gateway, kind: str) -> Response:
    arrived = time.monotonic_ns()
    deadlines = Deadlines.from_arrival(gw.bounds)
    payload, requested, model = await _read(request, gw)
    try:
        keep = _keep_alive(request, gw, payload)
        if is_empty(payload, kind):
            loaded = await _load_or_unload(request, gw, payload, requested, model, "generate", keep, deadlines)
            if loaded.status_code != 200:
                return loaded
            return JSONResponse({"model": requested, "embeddings": []} if kind == "embed" else {"embedding": []})
        call = embed_call(payload, kind)
    except BadRequest as exc:
        raise _bad(str(exc)) from None
    waited = gw.needs_load(model)
    engine_request = _engine_request(request, call.path)
    answer = await relay(engine_request, gw, _incoming(request, payload, call, model), deadlines)
    if answer.status_code != 200:
        return ollama_error(answer)
    gw.pool.give_keep_alive(model, keep)
    data = json.loads(bytes(answer.body))
    vectors = [item["embedding"] for item in sorted(data.get("data") or [], key=lambda item: item.get("index", 0))]
    if kind == "embeddings":
        return JSONResponse({"embedding": vectors[0] if vectors else []})
    sent = getattr(engine_request.state, SENT_AT, None) or arrived
    return JSONResponse({"model": requested, "embeddings": vectors,
                         "total_duration": time.monotonic_ns() - arrived,
                         "load_duration": sent - arrived if waited else 0,
                         "prompt_eval_count": int((data.get("usage") or {}).get("prompt_tokens") or 0)})


async def embed(request: Request, gw: Gateway) -> Response:
    return await _embeddings(request, gw, "embed")


async def embeddings(request: Request, gw: Gateway) -> Response:
    return await _embeddings(request, gw, "embeddings")


async def version(request: Request, gw: Gateway) -> Response:
    from animllm_cli import __version__

    return JSONResponse({"version": OLLAMA_VERSION, "animllm": __version__})


async def tags(request: Request, gw: Gateway) -> Response:
    client = client_of(request, gw)
    return JSONResponse({"models": [describe(gw.loaded, name, gw.started_at).listing()
                                    for name in gw.loaded.config.models if client.may_use(name)]})


async def show(request: Request, gw: Gateway) -> Response:
    _, _, model = await _read(request, gw)
    return JSONResponse(describe(gw.loaded, model, gw.started_at).show())


async def ps(request: Request, gw: Gateway) -> Response:
    """The ready engines: what they hold on the GPU (NVML's, else the plan's), and when each
    is unloaded if it stays idle (keep_alive: the config's, or the one a client gave)."""
    running = []
    now = datetime.now(timezone.utc)
    for model in gw.pool.models:
        resident = gw.pool.residents[model]
        held = sum(resident.vram_now().values()) or sum(resident.bytes_on(gpu) for gpu in resident.gpus)
        keep, idle = gw.pool.keep_alive(model), gw.scheduler.idle_for(model) or 0.0
        forever = keep < 0 or gw.pool.pinned(model)
        expires = now + (timedelta(days=365 * FOREVER_YEARS) if forever else timedelta(seconds=max(0.0, keep - idle)))
        described = describe(gw.loaded, model, gw.started_at)
        running.append({"name": model, "model": model, "size": held, "size_vram": held, "digest": described.digest(),
                        "details": described.details(), "expires_at": expires.isoformat().replace("+00:00", "Z"),
                        "context_length": described.context_length()})
    return JSONResponse({"models": sorted(running, key=lambda entry: entry["expires_at"], reverse=True)})


async def pull(request: Request, gw: Gateway) -> Response:
    payload, requested, model = await _read(request, gw)
    upstream = gw.loaded.config.models[model].upstream
    if upstream is not None:
        raise _bad(f"'{requested}' is served elsewhere ({', '.join(upstream.urls)}): there is nothing to pull here")
    progress = pull_progress(gw.loaded, model)
    if payload.get("stream") is not False:
        async def lines():
            async for update in progress:
                yield json.dumps(update).encode() + b"\n"
        return StreamingResponse(lines(), media_type=NDJSON.decode())
    last: dict[str, Any] = {}
    async for update in progress:
        last = update
    return JSONResponse(last, status_code=500 if "error" in last else 200)


REFUSED = {
    "/api/create": "models are not made from Modelfiles here: name the model (a Hugging Face repo or a local "
                   "directory) under `models:` in animllm's config, then run `animllm pull NAME`",
    "/api/copy": "a second name for a model is an alias: add it to the model's `aliases` in animllm's config",
    "/api/delete": "models leave by leaving animllm's config; their files stay in the Hugging Face cache "
                   "(`huggingface-cli delete-cache` removes them)",
    "/api/push": "animllm pulls models from the Hugging Face hub and pushes them nowhere",
    "/api/blobs": "there are no blobs to upload: a model's files come from the Hugging Face hub or from a local "
                  "directory that animllm's config names",
}


async def refused(request: Request, gw: Gateway) -> Response:
    path = "/api/blobs" if request.url.path.startswith("/api/blobs/") else request.url.path
    return error(501, f"{path} is not offered by animllm: {REFUSED[path]}", code="not_offered")


async def root(request: Request) -> Response:
    """Ollama's liveness answer, which its clients probe before they call anything (no key
    needed: it says nothing /health does not)."""
    return PlainTextResponse("Ollama is running")


def _route(path: str, handler: Any, methods: list[str]) -> Route:
    return Route(path, guarded(handler, media=API_MEDIA), methods=methods)


ROUTES = [Route("/", root, methods=["GET", "HEAD"]),
          _route("/api/version", version, ["GET", "HEAD"]), _route("/api/tags", tags, ["GET", "HEAD"]),
          _route("/api/ps", ps, ["GET"]), _route("/api/show", show, ["POST"]),
          _route("/api/chat", chat, ["POST"]), _route("/api/generate", generate, ["POST"]),
          _route("/api/embed", embed, ["POST"]), _route("/api/embeddings", embeddings, ["POST"]),
          _route("/api/pull", pull, ["POST"]),
          _route("/api/create", refused, ["POST"]), _route("/api/copy", refused, ["POST"]),
          _route("/api/delete", refused, ["DELETE"]), _route("/api/push", refused, ["POST"]),
          _route("/api/blobs/{digest}", refused, ["HEAD", "POST"])]

"""The fake vLLM's other APIs (tests/fakes/fake_vllm.py mounts them): the Responses API
with vLLM's in-memory store (only with VLLM_ENABLE_RESPONSES_API_STORE=1, as vLLM),
Anthropic's Messages API, audio transcription and translation (multipart forms) and the
pooling routes, answering in the shapes vLLM answers in, so that the real SDKs parse them.
Each request's model and route go to the fake's log (FAKE_VLLM_LOG) as its chat requests do.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from typing import Callable

from aiohttp import web

POOLING_ROUTES = ("/v1/score", "/score", "/v1/rerank", "/rerank", "/v2/rerank", "/pooling", "/classify")


def api_routes(names: list[str], record: Callable[[dict], None], awake: Callable[[web.Request], web.Response | None]):
    """The routes, for `app.add_routes`. `awake`: None where the engine may answer, else the
    error it answers with (sick, asleep), as its chat routes do."""
    store: dict[str, dict] = {}
    keeps = os.environ.get("VLLM_ENABLE_RESPONSES_API_STORE", "0") not in ("", "0")
    delay = float(os.environ.get("FAKE_VLLM_CHUNK_DELAY") or 0)  # generation's pace: a token each this many seconds
    ids = itertools.count(1)

    def unknown(model: object) -> web.Response | None:
        if model in names:
            return None
        return web.json_response({"error": {"message": f"The model `{model}` does not exist.", "type": "NotFoundError",
                                            "code": 404}}, status=404)

    async def read(request: web.Request, form: bool = False) -> tuple[dict, web.Response | None]:
        """The body (JSON, or a form), and what the engine answers instead where it does not answer."""
        body = await (request.post() if form else request.json())
        return body, awake(request) or unknown(body.get("model"))

    async def responses(request: web.Request) -> web.StreamResponse:
        body, refused = await read(request)
        if refused is not None:
            return refused
        previous = body.get("previous_response_id")
        if previous and previous not in store:
            return not_found(previous)
        tokens = int(body.get("max_output_tokens") or 4)
        text = " ".join(f"t{i}" for i in range(tokens))
        answer = {"id": f"resp_{os.getpid()}_{next(ids)}", "object": "response", "model": names[0], "status": "completed",
                  "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                              "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                  "usage": {"input_tokens": 3, "output_tokens": tokens, "total_tokens": tokens + 3},
                  "previous_response_id": previous}
        if body.get("store", True) and keeps:
            store[answer["id"]] = answer
        record({"model": body["model"], "path": request.path, "stream": bool(body.get("stream")),
                "previous_response_id": previous, "input": body.get("input")})
        if not body.get("stream"):
            await asyncio.sleep(delay * tokens)
            return web.json_response(answer)
        events = [("response.created", {"response": {**answer, "status": "in_progress", "output": []}}),
                  *(("response.output_text.delta", {"delta": f"t{i} ", "item_id": "msg_1", "output_index": 0,
                                                    "content_index": 0}) for i in range(tokens)),
                  ("response.completed", {"response": answer})]
        return await sse(request, [(name, {"type": name, "sequence_number": n, **data})
                                   for n, (name, data) in enumerate(events)])

    def not_found(response_id: str) -> web.Response:
        return web.json_response({"error": {"message": f"Response with id '{response_id}' not found.",
                                            "type": "invalid_request_error", "code": 404}}, status=404)

    async def stored(request: web.Request) -> web.Response:
        found = store.get(request.match_info["response_id"])
        if found is None:
            return not_found(request.match_info["response_id"])
        if request.path.endswith("/cancel"):
            found = {**found, "status": "cancelled"}
        record({"model": found["model"], "path": request.path})
        return web.json_response(found)

    async def messages(request: web.Request) -> web.StreamResponse:
        body, refused = await read(request)
        if refused is not None:
            return refused
        record({"model": body["model"], "path": request.path, "stream": bool(body.get("stream")),
                "system": body.get("system"), "anthropic_messages": body.get("messages")})
        if request.path.endswith("/count_tokens"):
            return web.json_response({"input_tokens": 3 * len(body.get("messages", []))})
        tokens = int(body.get("max_tokens") or 4)
        message = {"id": "msg_1", "type": "message", "role": "assistant", "model": names[0], "stop_reason": "max_tokens",
                   "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": tokens},
                   "content": [{"type": "text", "text": " ".join(f"t{i}" for i in range(tokens))}]}
        if not body.get("stream"):
            await asyncio.sleep(delay * tokens)
            return web.json_response(message)
        events = [("message_start", {"message": {**message, "content": [], "usage": {"input_tokens": 3,
                                                                                      "output_tokens": 0}}}),
                  ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
                  *(("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f"t{i} "}})
                    for i in range(tokens)),
                  ("content_block_stop", {"index": 0}),
                  ("message_delta", {"delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                                     "usage": {"output_tokens": tokens}}),
                  ("message_stop", {})]
        return await sse(request, [(name, {"type": name, **data}) for name, data in events])

    async def audio(request: web.Request) -> web.Response:
        form, refused = await read(request, form=True)
        if refused is not None:
            return refused
        upload = form.get("file")
        size = len(upload.file.read()) if upload is not None and hasattr(upload, "file") else 0
        record({"model": form.get("model"), "path": request.path, "file_bytes": size,
                "filename": getattr(upload, "filename", None)})
        return web.json_response({"text": f"{size} bytes heard by {names[0]}"})

    async def pooling(request: web.Request) -> web.Response:
        body, refused = await read(request)
        if refused is not None:
            return refused
        record({"model": body["model"], "path": request.path})
        return web.json_response({"id": "pool-1", "object": "list", "model": names[0],
                                  "data": [{"index": 0, "object": "score", "score": 0.5}],
                                  "usage": {"prompt_tokens": 3, "total_tokens": 3}})

    return [web.post("/v1/responses", responses), web.get("/v1/responses/{response_id}", stored),
            web.post("/v1/responses/{response_id}/cancel", stored),
            web.post("/v1/messages", messages), web.post("/v1/messages/count_tokens", messages),
            web.post("/v1/audio/transcriptions", audio), web.post("/v1/audio/translations", audio),
            *(web.post(path, pooling) for path in POOLING_ROUTES)]


async def sse(request: web.Request, events: list[tuple[str, dict]]) -> web.StreamResponse:
    """Named events, as vLLM streams the Responses and Messages APIs."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for name, data in events:
        await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
    return response

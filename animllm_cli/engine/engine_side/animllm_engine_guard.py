"""Runs inside the vLLM engine's process, not animllm's: the engine is started with
`--middleware animllm_engine_guard.RequireKey` and this folder on its PYTHONPATH, so this
file must need nothing but the standard library (the engine's Python may be another
environment, without animllm).

vLLM's own key (VLLM_API_KEY) guards only the /v1-style routes: /tokenize, and in
development mode /sleep, /wake_up, /collective_rpc and the weight-update routes, answer
anyone who reaches 127.0.0.1 (another local user; a web page, since a plain POST needs no
CORS preflight). This middleware asks the engine's key of every request but /health
(which the supervisor probes), and refuses a browser's preflight with it.
"""

from __future__ import annotations

import hmac
import os

OPEN_PATHS = frozenset({"/health"})
KEY_VARIABLE = "VLLM_API_KEY"


def allowed(path: str, authorization: str | None, key: str | None) -> bool:
    """Whether a request for `path` with this Authorization header may reach the engine
    (the scheme in any case, as vLLM's own check takes it)."""
    if not key or path in OPEN_PATHS:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), key.encode())


class RequireKey:
    """Pure ASGI middleware (vLLM adds a class with `app.add_middleware`)."""

    def __init__(self, app) -> None:
        self.app = app
        self.key = os.environ.get(KEY_VARIABLE)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        authorization = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"authorization"), None)
        path = scope.get("path", "")
        if allowed(path[len(scope.get("root_path", "")):] if path.startswith(scope.get("root_path", "")) else path,
                   authorization, self.key):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b'{"error": "Unauthorized"}'
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

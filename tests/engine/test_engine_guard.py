"""The middleware animllm puts into every engine (engine_side/animllm_engine_guard.py): the
engine's key on every route but /health, as a pure ASGI class that vLLM adds."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from animllm_cli.engine.command import ENGINE_GUARD, ENGINE_SIDE

sys.path.insert(0, str(ENGINE_SIDE))
import animllm_engine_guard as guard  # noqa: E402


def call(path: str, headers: list[tuple[bytes, bytes]], kind: str = "http") -> list[dict]:
    sent: list[dict] = []
    reached: list[str] = []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    async def send(message):
        sent.append(message)

    middleware = guard.RequireKey(app)
    middleware.key = "k3y"
    asyncio.run(middleware({"type": kind, "path": path, "headers": headers}, None, send))
    return sent if not reached else [{"reached": reached[0]}]


def test_every_route_but_health_needs_the_key() -> None:
    assert call("/health", []) == [{"reached": "/health"}]
    assert call("/sleep", [(b"authorization", b"Bearer k3y")]) == [{"reached": "/sleep"}]
    for path in ("/sleep", "/collective_rpc", "/tokenize", "/v1/models", "/update_weights"):
        refused = call(path, [(b"authorization", b"Bearer wrong")])
        assert refused[0]["status"] == 401 and refused[1]["body"] == b'{"error": "Unauthorized"}'
    assert call("/sleep", [])[0]["status"] == 401
    assert call("/v1/realtime", [], kind="websocket") == [{"type": "websocket.close", "code": 1008}]


def test_no_key_configured_guards_nothing() -> None:
    assert guard.allowed("/sleep", None, None) and not guard.allowed("/sleep", None, "k")


def test_the_guard_needs_only_the_standard_library() -> None:
    """It runs in the engine's Python, which may lack animllm and anything else."""
    module = ENGINE_GUARD.rsplit(".", 1)[0]
    code = f"import sys; sys.path.insert(0, {str(ENGINE_SIDE)!r}); import {module}; " \
           f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('animllm_cli', 'starlette', 'fastapi')))"
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_the_guard_as_vllm_adds_it_to_its_app() -> None:
    """`app.add_middleware(RequireKey)` after CORS, as vLLM's --middleware does (vLLM's app
    is FastAPI's, which is Starlette's)."""
    import os

    from starlette.applications import Starlette
    from starlette.middleware.cors import CORSMiddleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    ok = lambda request: JSONResponse({})  # noqa: E731
    app = Starlette(routes=[Route("/health", ok), Route("/tokenize", ok, methods=["POST"])])
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    saved = os.environ.get("VLLM_API_KEY")
    os.environ["VLLM_API_KEY"] = "k3y"
    try:
        app.add_middleware(guard.RequireKey)
        client = TestClient(app)
        assert client.get("/health").status_code == 200
        assert client.post("/tokenize").status_code == 401
        assert client.post("/tokenize", headers={"Authorization": "bearer k3y"}).status_code == 200
        preflight = client.options("/tokenize", headers={"Origin": "https://evil.example",
                                                         "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 401
    finally:
        if saved is None:
            os.environ.pop("VLLM_API_KEY")
        else:
            os.environ["VLLM_API_KEY"] = saved

"""A fake remote OpenAI-compatible server, in-process (its own thread and loop), for the
gateway's upstream tests: it records what reached it (headers included, to check where
keys go), asks a key if given one, serves TLS with a test CA, and can be told to fail
(503, a redirect, a connection dropped before or during the answer)."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.helpers import free_port


@dataclass
class FakeUpstream:
    name: str                              # told apart in answers (`"upstream": name`)
    served: list[str]                      # what /v1/models lists
    key: str | None = None
    mode: str = "ok"                       # ok | 503 | 504 | redirect | drop | die-mid-stream
    health_mode: str | None = None         # what GET /v1/models does (None: as `mode`)
    redirect_to: str | None = None
    chunks: int = 3
    chunk_delay_s: float = 0.0
    tls: ssl.SSLContext | None = None
    prefix: str = ""                       # a path before /v1 (a server behind a reverse proxy)
    seen: list[dict[str, Any]] = field(default_factory=list)
    open_now: int = 0                      # answers being written now
    most_open: int = 0
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{'localhost' if self.tls else '127.0.0.1'}:{self.port}{self.prefix}"

    def paths_seen(self) -> list[str]:
        return [s["path"] for s in self.seen]

    # ------------------------------------------------------------------ the routes
    def _refused(self, request: web.Request, mode: str) -> web.Response | None:
        self.seen.append({"path": request.path, "headers": dict(request.headers)})
        if self.key and request.headers.get("authorization") != f"Bearer {self.key}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        if mode == "redirect":
            raise web.HTTPTemporaryRedirect(f"{self.redirect_to}{request.path}")
        if mode in ("503", "504"):
            return web.json_response({"error": {"message": f"HTTP {mode}"}}, status=int(mode),
                                     headers={"retry-after": "7"})
        if mode == "drop":
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError("dropped")
        return None

    async def models(self, request: web.Request) -> web.StreamResponse:
        refused = self._refused(request, self.mode if self.health_mode is None else self.health_mode)
        return refused or web.json_response({"object": "list", "data": [{"id": m, "object": "model"}
                                                                         for m in self.served]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        refused = self._refused(request, self.mode)
        if refused:
            return refused
        body = await request.json()
        self.seen[-1]["body"] = body
        if body.get("model") not in self.served:
            return web.json_response({"error": {"message": f"no model {body.get('model')}"}}, status=404)
        if not body.get("stream"):
            return web.json_response({"upstream": self.name, "model": body["model"],
                                      "choices": [{"message": {"role": "assistant", "content": "hi"}}]})
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            return await self._stream(request)
        finally:
            self.open_now -= 1

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for index in range(self.chunks):
            if self.mode == "die-mid-stream" and index == 1:
                await asyncio.sleep(0.2)  # what was sent is read first (aiohttp drops data buffered at a reset)
                assert request.transport is not None
                request.transport.close()
                return response
            event = {"upstream": self.name, "choices": [{"delta": {"content": f"t{index}"}}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(self.chunk_delay_s)
        await response.write(b"data: [DONE]\n\n")
        return response

    # ------------------------------------------------------------------ lifetime
    def start(self) -> "FakeUpstream":
        self.port = self.port or free_port()
        app = web.Application()
        app.router.add_get(f"{self.prefix}/v1/models", self.models)
        app.router.add_post(f"{self.prefix}/v1/chat/completions", self.chat)
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        async def serve() -> None:
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.tls).start()
            started.set()

        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(timeout=10)
        started.wait(10)
        return self

    def stop(self) -> None:
        if self._loop and self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)

"""A stand-in for the Hugging Face hub, in-process (its own thread and loop), serving real
model files to the real huggingface_hub client (pointed at it by `endpoint`/HF_ENDPOINT).

Only the routes the client calls: `GET /api/models/{repo}/revision/{rev}` (model_info:
`sha`, `siblings` with sizes) and `HEAD`/`GET /{repo}/resolve/{rev}/{path}` with the
headers the client reads (X-Repo-Commit, ETag, Content-Length; `Range` honoured). Errors
as the hub gives them: 404 with `X-Error-Code: RepoNotFound | RevisionNotFound |
EntryNotFound`, 401 `GatedRepo` without the token. Never `X-Xet-Hash`: the plain HTTP path.
Every request is recorded (method, path, headers). `cut_after` drops the connection after
that many bytes of the first GET of a file; `interrupt_after` simulates Ctrl-C there;
`hold_after` sends that many, then the rest once `release` is set."""

from __future__ import annotations

import _thread
import asyncio
import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.helpers import free_port

HOLD_BOUND_S = 60  # a held file is sent in full after this long, released or not: no test hangs on it


@dataclass
class Revision:
    commit: str
    files: dict[str, bytes]


@dataclass
class FakeHub:
    repos: dict[str, dict[str, Revision]] = field(default_factory=dict)   # repo -> branch/tag -> revision
    gated: dict[str, str] = field(default_factory=dict)                   # repo -> the token it asks
    seen: list[dict[str, Any]] = field(default_factory=list)
    cut_after: int | None = None
    interrupt_after: int | None = None
    redirect_to: str | None = None   # a CDN's base URL: files answer 302 there, as the hub's LFS files do
    hold_after: int | None = None
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, repo: str, revision: str, directory: Path) -> Revision:
        files = {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
        commit = hashlib.sha1(f"{repo}@{revision}".encode() + b"".join(files.values())).hexdigest()
        self.repos.setdefault(repo, {})[revision] = Revision(commit, files)
        return self.repos[repo][revision]

    def gets(self, part: str = "/resolve/") -> list[dict[str, Any]]:
        return [s for s in self.seen if s["method"] == "GET" and part in s["path"]]

    # ------------------------------------------------------------------ lookups
    def _revision(self, repo: str, rev: str) -> Revision | web.Response:
        if repo not in self.repos:
            return web.json_response({"error": "Repository not found"}, status=404,
                                     headers={"X-Error-Code": "RepoNotFound"})
        if repo in self.gated:
            # huggingface_hub writes the header in lower case: aiohttp's mapping ignores case
            if self._seen_last["headers"].get("Authorization") != f"Bearer {self.gated[repo]}":
                return web.json_response({"error": f"Access to model {repo} is restricted."}, status=401,
                                         headers={"X-Error-Code": "GatedRepo"})
        found = self.repos[repo].get(rev) or next((r for r in self.repos[repo].values() if r.commit == rev), None)
        if found is None:
            return web.json_response({"error": f"Invalid rev id: {rev}"}, status=404,
                                     headers={"X-Error-Code": "RevisionNotFound"})
        return found

    def _record(self, request: web.Request) -> None:
        self._seen_last = {"method": request.method, "path": request.path, "headers": dict(request.headers)}
        self.seen.append(self._seen_last)

    # ------------------------------------------------------------------ routes
    async def _model_info(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        found = self._revision(repo, request.match_info.get("rev", "main"))
        if isinstance(found, web.Response):
            return found
        siblings = [{"rfilename": path, "size": len(data)} for path, data in found.files.items()]
        return web.json_response({"_id": repo, "id": repo, "modelId": repo, "sha": found.commit, "private": False,
                                  "tags": [], "siblings": siblings})

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        found = self._revision(repo, request.match_info["rev"])
        if isinstance(found, web.Response):
            return found
        path = request.match_info["path"]
        if path not in found.files:
            return web.json_response({"error": "Entry not found"}, status=404, headers={"X-Error-Code": "EntryNotFound",
                                                                                    "X-Repo-Commit": found.commit})
        data = found.files[path]
        headers = {"X-Repo-Commit": found.commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Accept-Ranges": "bytes"}
        if self.redirect_to:  # the hub's way for LFS files: the blob's etag and size in X-Linked-*
            return web.Response(status=302, headers={
                "X-Repo-Commit": found.commit, "X-Linked-Etag": headers["ETag"], "X-Linked-Size": str(len(data)),
                "Location": f"{self.redirect_to}/{repo}/resolve/{found.commit}/{path}"})
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(data))})
        start = _range_start(request.headers.get("Range"))
        body = data[start:]
        response = web.StreamResponse(status=206 if start else 200, headers={
            **headers, **({"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {})})
        response.content_length = len(body)
        await response.prepare(request)
        first_get = len([s for s in self.gets() if s["path"] == request.path]) == 1
        if first_get and self.cut_after is not None and len(body) > self.cut_after:
            await response.write(body[:self.cut_after])
            await asyncio.sleep(0.2)
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-file
            return response
        if first_get and self.interrupt_after is not None and len(body) > self.interrupt_after:
            await response.write(body[:self.interrupt_after])
            await asyncio.sleep(0.2)
            _thread.interrupt_main()  # Ctrl-C in the client; the rest trickles in so it wakes and sees it
            for offset in range(self.interrupt_after, len(body), 4096):
                await response.write(body[offset:offset + 4096])
                await asyncio.sleep(0.05)
            return response
        if first_get and self.hold_after is not None and len(body) > self.hold_after:
            await response.write(body[:self.hold_after])
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, HOLD_BOUND_S)
            body = body[self.hold_after:]
        await response.write(body)
        await response.write_eof()
        return response

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeHub":
        self.port = self.port or free_port()
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/api/models/{org}/{name}/revision/{rev}", self._model_info)
        app.router.add_get("/api/models/{org}/{name}", self._model_info)
        app.router.add_route("HEAD", "/{org}/{name}/resolve/{rev}/{path:.+}", self._resolve)
        app.router.add_get("/{org}/{name}/resolve/{rev}/{path:.+}", self._resolve, allow_head=False)

        async def serve() -> None:
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._loop and self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            time.sleep(0)


def _range_start(header: str | None) -> int:
    """`bytes=N-` -> N (the only form huggingface_hub sends when it resumes)."""
    if not header or not header.startswith("bytes="):
        return 0
    return int(header[len("bytes="):].split("-", 1)[0] or 0)

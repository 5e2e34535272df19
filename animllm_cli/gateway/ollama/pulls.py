"""`/api/pull` for a configured model: the pull `animllm pull` makes (the gateway's own,
gateway/downloads.py), its progress in Ollama's form: "pulling manifest", then each file
being fetched ("pulling <file>", its `total` and `completed` bytes), then "success"; a
failure as a last `{"error": ...}` line. A client that goes away ends the pull at its next
write (the partial file is kept: the next pull resumes it)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator

from animllm_cli.config import LoadedConfig
from animllm_cli.gateway.downloads import Download

PROGRESS_EVERY_S = 0.5


class PullAbandoned(Exception):
    """The client that asked for the pull went away."""


async def pull_progress(loaded: LoadedConfig, model: str) -> AsyncIterator[dict[str, Any]]:
    """Ollama's progress objects for pulling `model`, the last "success" or an error."""
    yield {"status": "pulling manifest"}
    abandoned = threading.Event()

    def raise_if_abandoned() -> None:
        if abandoned.is_set():
            raise PullAbandoned()

    download = Download(model, None, raise_if_abandoned)
    pulling = asyncio.ensure_future(asyncio.to_thread(download.run, loaded))
    shown: dict[str, tuple[int, int]] = {}
    try:
        while True:
            done, _ = await asyncio.wait({pulling}, timeout=PROGRESS_EVERY_S)
            for update in _changes(download, shown):
                yield update
            if done:
                break
        error = pulling.exception()
        if error is not None:
            yield {"error": str(error)}
            return
        for path, size in download.sizes.items():  # every file whole, as Ollama's last progress shows it
            if shown.get(path) != (size, size):
                yield _file(path, size, size)
        yield {"status": "success"}
    finally:
        abandoned.set()  # a client gone (the generator is closed): the pulling thread stops at its next write


def _changes(download: Download, shown: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    updates = []
    for path, size in download.sizes.items():
        state = (size, download.on_disk.get(path, 0))
        if shown.get(path) != state:
            shown[path] = state
            updates.append(_file(path, *state))
    return updates


def _file(path: str, total: int, completed: int) -> dict[str, Any]:
    update: dict[str, Any] = {"status": f"pulling {path}", "digest": path, "total": total}
    if completed:
        update["completed"] = completed
    return update

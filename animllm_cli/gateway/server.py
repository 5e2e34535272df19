"""Assemble and run the gateway: the app, uvicorn, the state file's lifetime, and the
first model load. What others need to know about a gateway lives in the leaves `runfile`, `bind` and `wire`."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from animllm_cli import server_stack
from animllm_cli.config import LoadedConfig
from animllm_cli.bind import url_host
from animllm_cli.runfile import GatewayState, remove_state, write_state


@dataclass
class Hooks:
    on_ready: Callable[[Any], None] | None = None        # the first model is loaded (SwitchReport)
    on_failed: Callable[[Exception], None] | None = None  # it could not be loaded
    on_stopped: Callable[[Any], None] | None = None       # gateway down, engine stopped (StopReport)
    on_note: Callable[[str], None] | None = None          # how each further preload went


def build(loaded: LoadedConfig, *, model: str, host: str, port: int, key: str | None, hooks: Hooks,
          preload: list[str] | None = None,
          log_path: str | None = None, nvml_module: object | None = None, log_dir: Path | None = None,
          on_progress: Callable | None = None, write_state_file: bool = True, exit_on_failed_load: bool = True,
          engine_env: Any = None, host_available: Callable[[], int] | None = None, pull: bool = True):
    """A uvicorn.Server for the gateway, and the Gateway itself. It loads `model`, then
    each of `preload` in turn (beside the others where the plan has room). `engine_env`:
    what the engine's Python has installed (read from it when not given): whether its
    vLLM can sleep. `pull`: download a model a request loads when the cache lacks it."""
    import uvicorn

    from animllm_cli.engine.command import engine_python
    from animllm_cli.engine.python_env import probe_python_cached
    from animllm_cli.gateway import routes_admin, routes_clients
    from animllm_cli.gateway.ollama import routes as routes_ollama
    from animllm_cli.gateway.app import Gateway, create_app
    from animllm_cli.gateway.pool import EnginePool

    if engine_env is None and any(loaded.config.models[m].sleep != "off" for m in loaded.local_model_names()):
        engine_env = probe_python_cached(engine_python(loaded))  # can its vLLM sleep (the command builder reads it too)
    pool = EnginePool(loaded, log_dir=log_dir, nvml_module=nvml_module, on_progress=on_progress,
                      engine_env=engine_env, host_available=host_available, pull=pull)
    state_file = _StateFile() if write_state_file else None
    if state_file:
        pool.on_engines_changed = lambda: state_file.record_engines(pool)
    gateway = Gateway(loaded, api_key=key, pool=pool, nvml_module=nvml_module)
    server_box: dict[str, uvicorn.Server] = {}

    async def first_load() -> None:
        try:
            report = await gateway.load(model)
        except Exception as exc:
            gateway.failed = exc
            if hooks.on_failed:
                hooks.on_failed(exc)
            if exit_on_failed_load:  # `serve` reports the diagnosis and exits 1
                server_box["server"].should_exit = True
        else:
            if hooks.on_ready:
                hooks.on_ready(report)
            for name in [m for m in dict.fromkeys(preload or []) if m != model]:
                await _preload(name)

    async def _preload(name: str) -> None:
        note = hooks.on_note or (lambda text: None)
        if name in gateway.upstreams:
            note(f"preload: {name} is served elsewhere: nothing to load")
            return
        try:
            report = await gateway.load(name)  # its own switch's, not one that ended beside it
        except Exception as exc:
            note(f"preload: {name} could not be loaded: {getattr(exc, 'reason', None) or exc}")
            return
        evicted = f"; it evicted {', '.join(report.evicted)} (they do not fit together: see `animllm plan " \
                  f"--together`)" if report and report.evicted else ""
        took = f"woken in {report.wake_s:.1f}s" if report and report.wake_s is not None else \
            f"ready in {report.load_s or 0:.1f}s" if report else "ready"
        note(f"preload: {name} {took}{evicted}")

    async def on_startup() -> None:
        if state_file:
            state_file.open(GatewayState(os.getpid(), f"http://{url_host(host)}:{port}", host, port, time.time(),
                                         log_path, [str(f) for f in loaded.files]))
        gateway._tasks.append(asyncio.create_task(first_load()))

    async def on_shutdown(stopped: Any) -> None:
        if state_file:
            state_file.close()
        if hooks.on_stopped:
            hooks.on_stopped(stopped)

    app = create_app(gateway, [*routes_clients.ROUTES, *routes_ollama.ROUTES, *routes_admin.ROUTES], on_startup=on_startup,
                     on_shutdown=on_shutdown)
    # uvloop and httptools by name where installed (declared dependencies), not by uvicorn's
    # "auto": a missing one is then said (status, doctor) rather than silently replaced.
    stack = server_stack.chosen()
    gateway.http_parser = stack.http
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=5, loop=stack.loop, http=stack.http)
    server = uvicorn.Server(config)
    server_box["server"] = server
    gateway.shutdown_hook = lambda: setattr(server, "should_exit", True)
    return server, gateway


class _StateFile:
    """The gateway's state file, rewritten whenever its engines change (from the loop or
    from a starting thread: one writer at a time), so that it always names the engine
    groups a sudden death of this process would leave for the next `serve`/`stop`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: GatewayState | None = None

    def open(self, state: GatewayState) -> None:
        with self._lock:
            self._state = state
            write_state(state)

    def record_engines(self, pool: Any) -> None:
        with self._lock:
            if self._state is None:  # not written yet, or removed at shutdown: never recreate it
                return
            self._state.engines = pool.engine_groups()
            write_state(self._state)

    def close(self) -> None:
        with self._lock:
            if self._state is not None:
                remove_state(self._state.pid)
                self._state = None


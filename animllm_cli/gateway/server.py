"""Assemble and run the gateway: the app, uvicorn, the state file's lifetime, and the
first model load. What others need to know about a gateway lives in `gateway.state`."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from animllm_cli.config import LoadedConfig
from animllm_cli.gateway.state import GatewayState, remove_state, url_host, write_state


@dataclass
class Hooks:
    on_ready: Callable[[Any], None] | None = None        # the first model is loaded (SwitchReport)
    on_failed: Callable[[Exception], None] | None = None  # it could not be loaded
    on_stopped: Callable[[Any], None] | None = None       # gateway down, engine stopped (StopReport)


def build(loaded: LoadedConfig, *, model: str, host: str, port: int, key: str | None, hooks: Hooks,
          log_path: str | None = None, nvml_module: object | None = None, log_dir: Path | None = None,
          on_progress: Callable | None = None, write_state_file: bool = True, exit_on_failed_load: bool = True):
    """A uvicorn.Server for the gateway, and the Gateway itself."""
    import uvicorn

    from animllm_cli.gateway.app import Gateway, create_app
    from animllm_cli.gateway.manager import EngineManager

    manager = EngineManager(loaded, log_dir=log_dir, nvml_module=nvml_module, on_progress=on_progress)
    gateway = Gateway(loaded, api_key=key, bind_host=host, manager=manager, nvml_module=nvml_module)
    server_box: dict[str, uvicorn.Server] = {}

    async def first_load() -> None:
        try:
            await gateway.load(model)
        except Exception as exc:
            gateway.failed = exc
            if hooks.on_failed:
                hooks.on_failed(exc)
            if exit_on_failed_load:  # `serve` reports the diagnosis and exits 1
                server_box["server"].should_exit = True
        else:
            if hooks.on_ready:
                hooks.on_ready(manager.last_switch)

    async def on_startup() -> None:
        if write_state_file:
            write_state(GatewayState(os.getpid(), f"http://{url_host(host)}:{port}", host, port, time.time(), log_path,
                                     [str(f) for f in loaded.files]))
        gateway._tasks.append(asyncio.create_task(first_load()))

    async def on_shutdown(stopped: Any) -> None:
        if write_state_file:
            remove_state(os.getpid())
        if hooks.on_stopped:
            hooks.on_stopped(stopped)

    app = create_app(gateway, on_startup=on_startup, on_shutdown=on_shutdown)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    server_box["server"] = server
    gateway.shutdown_hook = lambda: setattr(server, "should_exit", True)
    return server, gateway


"""Run the gateway: bind checks, the state file that `status`/`switch`/`stop` find it by,
uvicorn, and the first model load."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import psutil

from animllm_cli import paths
from animllm_cli.config import LoadedConfig
from animllm_cli.errors import AnimllmError, UsageError

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@dataclass
class GatewayState:
    pid: int
    url: str
    host: str
    port: int
    started_at: float
    log: str | None
    config_files: list[str]


def state_path() -> Path:
    return paths.state_dir() / "gateway.json"


def read_state() -> GatewayState | None:
    """The running gateway, if any. A state file left by a dead gateway is removed."""
    path = state_path()
    try:
        state = GatewayState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)
        return None
    if not _alive_since(state.pid, state.started_at):
        path.unlink(missing_ok=True)
        return None
    return state


def _alive_since(pid: int, started_at: float) -> bool:
    """The gateway's process still runs: same pid, and created before it wrote the file
    (a pid the kernel reused for another program was created later)."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= started_at + 1
    except psutil.Error:
        return False


def write_state(state: GatewayState) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)


def remove_state(pid: int) -> None:
    path = state_path()
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (FileNotFoundError, ValueError):
        pass


def api_key(loaded: LoadedConfig) -> str | None:
    """The key comes from the environment variable the config names, never from argv."""
    return os.environ.get(loaded.config.server.api_key_env) or None


def bind_error(host: str, port: int) -> str | None:
    """Why the gateway could not listen on host:port right now, or None if it could."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def check_bind(host: str, key: str | None, key_env: str) -> None:
    if host not in LOOPBACK and not key:
        raise UsageError(f"refusing to bind {host} without an API key",
                         hint=f"export {key_env}=<a long random key> first, or bind 127.0.0.1")


def ensure_not_running() -> None:
    running = read_state()
    if running:
        raise AnimllmError(f"a gateway is already running (pid {running.pid}, {running.url})",
                           hint="`animllm status` shows it; `animllm stop` stops it")


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
            write_state(GatewayState(os.getpid(), f"http://{_url_host(host)}:{port}", host, port, time.time(), log_path,
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


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host

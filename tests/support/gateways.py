"""A real gateway (uvicorn + the app) in a background thread, driving fake engines (or,
for the engine tier, real ones); a fake vLLM run on its own as a remote server; the
bounds the product gives an engine start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from animllm_cli.config import load_config
from animllm_cli.gateway import server as gateway_server
from tests.support.helpers import REPO_ROOT, free_port, write
from tests.support.waiting import wait_until


def fake_gateway_config(tmp_path: Path, *, mode: str = "ok", after: float = 1, chunk_delay: float = 0,
                        concurrency: int = 4, queue_max: int = 64, kv: float = 0.1, limits: dict | None = None,
                        engine: dict | None = None, models: dict[str, dict] | None = None,
                        sections: dict[str, dict] | None = None, crash_models: str = "",
                        env: dict[str, str] | None = None, extra_models: dict[str, dict] | None = None) -> Path:
    """Three fake models a, b, v; `models` adds keys to them (share, pin, keep_alive, gpus),
    `extra_models` adds whole model entries (a remote one: `{"upstream": {...}}`),
    `sections` adds top-level sections (pool, gpu, scheduler), `env` more FAKE_VLLM_* knobs."""
    # A free port of its own rather than engine.port's 8100: gateways of tests running at
    # once (pytest-xdist's workers) would race for that one.
    settings = {"module": "tests.fakes.fake_vllm", "port": free_port(), "stall_timeout_s": 5, "start_timeout_s": 30,
                "stop_grace_s": 2, "health_interval_s": 0.2, "health_failures": 3, **(engine or {})}
    base = {"a": {"source": "org/model-a", "profile": "p", "tasks": ["chat"], "aliases": ["alpha"]},
            "b": {"source": "org/model-b", "profile": "p", "tasks": ["code"]},
            "v": {"source": "org/model-v", "profile": "p", "tasks": ["vision"]}}
    entries = {name: {**keys, **(models or {}).get(name, {})} for name, keys in base.items()}
    entries.update(extra_models or {})
    extra = "".join(f"        {name}: {json.dumps(value)}\n" for name, value in (sections or {}).items())
    # HF_HUB_OFFLINE: the fake models' sources (org/model-a) are no repos to pull; `env` may say otherwise.
    engine_env = {"PYTHONPATH": str(REPO_ROOT), "FAKE_VLLM_MODE": mode, "FAKE_VLLM_AFTER": str(after),
                  "FAKE_VLLM_CHUNK_DELAY": str(chunk_delay), "FAKE_VLLM_KV": str(kv),
                  "FAKE_VLLM_CRASH_MODELS": crash_models, "FAKE_VLLM_LOG": str(tmp_path / "requests.jsonl"),
                  "HF_HUB_OFFLINE": "1", **(env or {})}
    return write(tmp_path / "gateway.yaml", f"""
        inherit_defaults: false
        engine: {json.dumps(settings)}
        env: {json.dumps(engine_env)}
        limits: {json.dumps({"request_timeout_s": 30, "queue_max": queue_max, "vram_threshold": 0.95, **(limits or {})})}
        profiles: {{p: {{max_model_len: 1024, concurrency: {concurrency}}}}}
        models: {json.dumps(entries)}
        default_model: a
{extra}    """)


REMOTE_START_BOUND_S = 60  # the fake starts in ~0.3 s after its imports; a loaded machine is far slower


@contextlib.contextmanager
def remote_fake_vllm(tmp_path: Path, *, served_name: str, key: str | None = None, env: dict[str, str] | None = None,
                     args: tuple[str, ...] = ()) -> Iterator[tuple[str, subprocess.Popen]]:
    """A fake vLLM started on its own, playing a server on another machine (a model's
    `upstream`): yields its base URL (http://127.0.0.1:PORT, no `/v1`) and the process,
    once its /health answers. `key`: the Bearer key its /v1 routes ask (VLLM_API_KEY);
    `env`: more FAKE_VLLM_* knobs; `args`: more of its command line. Its output goes to tmp_path/remote-<served_name>.log;
    its whole process group is killed on exit."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k != "VLLM_API_KEY" and not k.startswith("FAKE_VLLM_")}
    environ.update({"PYTHONPATH": str(REPO_ROOT), **({"VLLM_API_KEY": key} if key else {}), **(env or {})})
    log = (tmp_path / f"remote-{served_name}.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.fake_vllm", "--model", f"org/{served_name}",
                                "--port", str(port), "--served-model-name", served_name, *args],
                               env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, tmp_path / f"remote-{served_name}.log")
        yield url, process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the group is the fake and its children
        process.wait(timeout=30)
        log.close()


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    def healthy_or_exited() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return process.poll() is not None or httpx.get(f"{url}/health", timeout=2).status_code == 200
        return False

    wait_until(healthy_or_exited, REMOTE_START_BOUND_S, f"the remote fake vLLM at {url} to answer /health")
    assert process.poll() is None, f"the remote fake vLLM at {url} exited:\n{log.read_text()}"


def stop_bound_s(loaded: Any) -> float:
    """How long the product may take to stop an engine: grace, SIGKILL, VRAM release."""
    engine = loaded.config.engine
    return engine.stop_grace_s + 5 + engine.vram_release_timeout_s + 30


def start_bound_s(loaded: Any) -> float:
    """How long the product may take to load a model and give up on it: the engine's start
    timeout, plus stopping what was loaded before (a switch) and the failed start."""
    return loaded.config.engine.start_timeout_s + 2 * stop_bound_s(loaded)


@dataclass
class RunningGateway:
    url: str
    gateway: Any
    server: Any
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    tmp_path: Path
    events: list[tuple[str, Any]] = field(default_factory=list)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def requests_seen(self) -> list[dict]:
        log = self.tmp_path / "requests.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def wait_ready(self) -> None:
        """Until the first load is ready or failed: the gateway's own start bound decides
        which, so this waits as long as the product would, never on this machine's speed."""
        wait_until(lambda: any(kind in ("ready", "failed") for kind, _ in self.events),
                   start_bound_s(self.gateway.loaded), "the gateway's first load to be ready or failed")

    @contextlib.contextmanager
    def one_waiting(self, busy: str, waiting: str) -> Iterator[None]:
        """Hold the slot of the loaded model `busy` and queue one request for `waiting`
        behind it, straight through the scheduler on the gateway's loop."""
        scheduler = self.gateway.scheduler
        holder = asyncio.run_coroutine_threadsafe(scheduler.acquire(busy), self.loop).result(timeout=10)
        waiter = asyncio.run_coroutine_threadsafe(scheduler.acquire(waiting), self.loop)
        # Queued on the gateway's loop, not yet when this returns: wait for it to be in the queue.
        wait_until(lambda: any(t.model == waiting for t in scheduler.waiting), 10, f"a request for {waiting} to queue")
        try:
            yield
        finally:
            waiter.cancel()
            self.loop.call_soon_threadsafe(holder.release)

    @contextlib.contextmanager
    def one_running(self, model: str) -> Iterator[None]:
        """Hold a slot on the resident `model`, as a request in flight would."""
        lease = asyncio.run_coroutine_threadsafe(self.gateway.scheduler.acquire(model), self.loop).result(timeout=10)
        try:
            yield
        finally:
            self.loop.call_soon_threadsafe(lease.release)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=stop_bound_s(self.gateway.loaded))


def start_gateway(tmp_path: Path, config: Path, *, model: str = "a", key: str | None = None, host: str = "127.0.0.1",
                  nvml: Any = None, wait: bool = True, preload: list[str] | None = None,
                  engine_env: Any = None, host_available: Any = None, state_file: bool = True,
                  pull: bool = False) -> RunningGateway:
    """`engine_env` (a PythonEnv): what the engine's Python is said to have (a CUDA build
    of vLLM lets the fake engines sleep); `host_available`: the host RAM free, in bytes;
    `state_file`: write the state file in the state dir of the moment (a gateway that
    outlives one test writes none: each test that uses it writes its own); `pull`: as
    `serve` without --no-pull (the fake models' sources are no repos: off unless asked)."""
    from tests.fakes.nvml import FakeNvml

    loaded = load_config(config)
    port = free_port()
    events: list[tuple[str, Any]] = []
    hooks = gateway_server.Hooks(on_ready=lambda r: events.append(("ready", r)),
                                 on_failed=lambda e: events.append(("failed", e)),
                                 on_stopped=lambda r: events.append(("stopped", r)),
                                 on_note=lambda text: events.append(("note", text)))
    server, gateway = gateway_server.build(loaded, model=model, host=host, port=port, key=key, hooks=hooks,
                                           preload=preload, engine_env=engine_env, host_available=host_available,
                                           nvml_module=nvml or FakeNvml(missing=True), log_dir=tmp_path / "logs",
                                           exit_on_failed_load=False, write_state_file=state_file, pull=pull)
    gateway.admission_interval_s = 0.1
    loop = asyncio.new_event_loop()  # kept, so that tests can run coroutines on the gateway's loop
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    running = RunningGateway(f"http://127.0.0.1:{port}", gateway, server, thread, loop, tmp_path, events)
    wait_until(lambda: server.started or not thread.is_alive(), start_bound_s(loaded), "the gateway to listen")
    if wait:
        running.wait_ready()
    return running


@contextlib.contextmanager
def bench_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expectations: str,
                  **config: Any) -> Iterator[RunningGateway]:
    """The gateway bench's tests run against: fake engines (paced at 2 ms a chunk), the
    config's expectations for profile p, and ANIMLLM_CONFIG pointing at it."""
    path = fake_gateway_config(tmp_path, chunk_delay=0.002, **config)
    path.write_text(path.read_text() + f"expectations: {{p: {expectations}}}\n")
    monkeypatch.setenv("ANIMLLM_CONFIG", str(path))
    running = start_gateway(tmp_path, path)
    try:
        yield running
    finally:
        running.stop()

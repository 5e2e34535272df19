"""One vLLM engine process: start it, know when it is ready or why it failed, watch it,
and stop every process it made.

Blocking calls, with threads for the output and the liveness probe, so that a CLI can use
it directly and an asyncio gateway through `asyncio.to_thread`.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable

import httpx
import psutil

from animllm_cli.config.engine_command import ENGINE_HOST, EngineCommand
from animllm_cli.config.schema import EngineSection
from animllm_cli.engine import diagnosis, processes
from animllm_cli.engine.logpipe import OutputPump
from animllm_cli.errors import AnimllmError
from animllm_cli.gpu import nvml
from animllm_cli.units import MIB

TAIL_LINES = 30


class State(str, Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"
    STOPPED = "stopped"


@dataclass
class Progress:
    model: str
    phase: str
    elapsed_s: float
    last_line: str | None


@dataclass
class StartReport:
    model: str
    pid: int
    port: int
    ready_s: float
    phases: list[tuple[str, float]]   # phase and the second it began


@dataclass
class StopReport:
    model: str
    stop_s: float
    forced: bool                       # SIGKILL was needed after the grace period
    left: list[int]                    # pids still alive afterwards (should be empty)
    vram_release_s: float | None       # None without a GPU
    vram_note: str


class EngineStartError(AnimllmError):
    """The engine did not become ready: exited, stalled, timed out, or was interrupted."""

    def __init__(self, model: str, message: str, *, fix: str | None, log_tail: list[str], log_path: Path,
                 kind: str) -> None:
        tail = "\n".join(f"    {line}" for line in log_tail)
        super().__init__(f"engine for '{model}' failed to start: {message}\n  last lines of {log_path}:\n{tail}",
                         hint=fix)
        self.model, self.reason, self.fix, self.kind = model, message, fix, kind
        self.log_tail, self.log_path = log_tail, log_path


def free_port(preferred: int | None = None) -> int:
    """`preferred` when it is free on the engine host, else a port the kernel picks."""
    for wanted in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            try:
                sock.bind((ENGINE_HOST, wanted))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise AssertionError("unreachable: port 0 always binds")


_LIVE: "weakref.WeakSet[Engine]" = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    """Nothing is left running when the owning process exits."""
    for engine in list(_LIVE):
        engine.stop()


@dataclass(eq=False)  # identity semantics: engines live in a WeakSet
class Engine:
    model: str
    command: EngineCommand
    log_path: Path
    settings: EngineSection = field(default_factory=EngineSection)
    on_progress: Callable[[Progress], None] | None = None
    on_dead: Callable[["Engine", str], None] | None = None
    nvml_module: object | None = None          # tests hand in a fake NVML

    def __post_init__(self) -> None:
        self.port = self.command.port
        self.state = State.NEW
        self.death_reason: str | None = None
        self._proc: subprocess.Popen | None = None
        self._pump: OutputPump | None = None
        self._known: dict[int, psutil.Process] = {}
        self._started_at = 0.0
        self._stop_lock = threading.Lock()
        self._watch_stop = threading.Event()

    # ------------------------------------------------------------------ properties
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def base_url(self) -> str:
        return f"http://{ENGINE_HOST}:{self.port}"

    @property
    def phase(self) -> str:
        return self._pump.phase if self._pump else "not started"

    def pids(self) -> set[int]:
        """Every live process of this engine, by group and by tree."""
        if not self._proc:
            return set()
        self._remember_tree()
        return processes.group_members(self._proc.pid) | processes.living(self._known)

    # ------------------------------------------------------------------ start
    def start(self) -> StartReport:
        """Launch and wait for /health 200. Raises EngineStartError with a diagnosis."""
        read_fd, write_fd = os.pipe()
        env = self.command.full_env()
        try:
            self._proc = subprocess.Popen(self.command.argv, env=env, stdin=subprocess.DEVNULL, stdout=write_fd,
                                          stderr=write_fd, start_new_session=True, close_fds=True)
        except OSError as exc:
            os.close(read_fd)
            raise AnimllmError(f"cannot run the engine interpreter {self.command.argv[0]}: {exc.strerror}",
                               hint="set engine.python to an interpreter that has vLLM") from None
        finally:
            os.close(write_fd)
        _LIVE.add(self)
        self.state = State.STARTING
        self._started_at = time.monotonic()
        self._pump = OutputPump(read_fd, self.log_path, max_bytes=self.settings.log_max_bytes)
        try:
            phases = self._wait_ready()
        except BaseException:  # a failed start and Ctrl-C both leave nothing behind
            self.stop()
            raise
        self.state = State.READY
        threading.Thread(target=self._watch, name=f"engine-watch-{self.model}", daemon=True).start()
        return StartReport(self.model, self._proc.pid, self.port, time.monotonic() - self._started_at, phases)

    def _wait_ready(self) -> list[tuple[str, float]]:
        seen: list[tuple[str, float]] = []
        client = httpx.Client(timeout=2.0)
        try:
            while True:
                elapsed = time.monotonic() - self._started_at
                phase = self._pump.phase
                if not seen or seen[-1][0] != phase:
                    seen.append((phase, round(elapsed, 2)))
                self._remember_tree()
                if self.on_progress:
                    tail = self._pump.lines(1)
                    self.on_progress(Progress(self.model, phase, elapsed, tail[0] if tail else None))
                code = self._proc.poll()
                if code is not None:
                    self._pump.closed.wait(1.0)  # let the last lines arrive
                    raise self._start_error(f"the engine exited with code {code} while starting", "exited")
                if self._healthy(client):
                    seen.append(("ready", round(time.monotonic() - self._started_at, 2)))
                    return seen
                silent = time.monotonic() - self._pump.last_output
                if silent > self.settings.stall_timeout_s:
                    raise self._start_error(f"no output for {silent:.0f}s in phase '{phase}' (stall_timeout_s "
                                            f"{self.settings.stall_timeout_s:g}); stopped it", "stalled",
                                            generic_fix="raise engine.stall_timeout_s if this model is just slow")
                if elapsed > self.settings.start_timeout_s:
                    raise self._start_error(f"not ready after {elapsed:.0f}s (start_timeout_s "
                                            f"{self.settings.start_timeout_s:g}), in phase '{phase}'", "timeout",
                                            generic_fix="raise engine.start_timeout_s if this model is just slow")
                time.sleep(0.25)
        finally:
            client.close()

    def _healthy(self, client: httpx.Client) -> bool:
        try:
            return client.get(f"{self.base_url}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def _start_error(self, what: str, kind: str, generic_fix: str | None = None) -> EngineStartError:
        lines = self._pump.lines()
        found = diagnosis.diagnose(lines, diagnosis.Context(self.model, self.port, self._gpu_holders))
        if found:
            return EngineStartError(self.model, f"{found.message} ({what})", fix=found.fix, kind=found.kind,
                                    log_tail=lines[-TAIL_LINES:], log_path=self.log_path)
        return EngineStartError(self.model, what, fix=generic_fix or f"read the log: {self.log_path}", kind=kind,
                                log_tail=lines[-TAIL_LINES:], log_path=self.log_path)

    def _gpu_holders(self) -> str:
        report = nvml.probe(self.nvml_module)
        if report.error:
            return report.error
        held = [f"{p.name} (pid {p.pid}, {p.used_bytes // MIB if p.used_bytes else '?'} MiB)"
                for g in report.gpus for p in g.processes]
        return ", ".join(held) or "no process listed by NVML"

    def _remember_tree(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._known.update(processes.tree(self._proc.pid))

    # ------------------------------------------------------------------ liveness
    def _watch(self) -> None:
        failures = 0
        with httpx.Client(timeout=min(5.0, self.settings.health_interval_s * 2)) as client:
            while not self._watch_stop.wait(self.settings.health_interval_s):
                self._remember_tree()
                code = self._proc.poll()
                if code is not None:
                    return self._died(f"the engine process exited with code {code}")
                failures = 0 if self._healthy(client) else failures + 1
                if failures >= self.settings.health_failures:
                    return self._died(f"/health failed {failures} times in a row")

    def _died(self, reason: str) -> None:
        if self.state is not State.READY:
            return
        self.state, self.death_reason = State.DEAD, reason
        if self.on_dead:
            self.on_dead(self, reason)

    # ------------------------------------------------------------------ stop
    def stop(self) -> StopReport:
        """SIGTERM the group, SIGKILL after the grace period, reap, confirm, then wait for
        the GPU to release the memory. Safe to call more than once."""
        with self._stop_lock:
            if self._proc is None or self.state is State.STOPPED:
                return StopReport(self.model, 0.0, False, [], None, "not running")
            started = time.monotonic()
            self._watch_stop.set()
            self._remember_tree()
            pgid = self._proc.pid
            gpu_pids = set(self._known) | {pgid}
            processes.signal_all(pgid, self._known, signal.SIGTERM)
            left = processes.wait_gone(pgid, self._known, self.settings.stop_grace_s)
            forced = bool(left)
            if left:
                processes.signal_all(pgid, self._known, signal.SIGKILL)
                left = processes.wait_gone(pgid, self._known, 5.0)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            stop_s = time.monotonic() - started
            if self._pump:
                self._pump.close()
            self.state = State.STOPPED
            _LIVE.discard(self)
            release_s, note = self._wait_vram_released(gpu_pids)
            return StopReport(self.model, round(stop_s, 3), forced, sorted(left), release_s, note)

    def _wait_vram_released(self, pids: set[int]) -> tuple[float | None, str]:
        """A freed port is not freed VRAM: poll NVML until none of our processes holds any."""
        started = time.monotonic()
        deadline = started + self.settings.vram_release_timeout_s
        while True:
            report = nvml.probe(self.nvml_module)
            if report.error:
                return None, f"no GPU to release ({report.error})"
            holding = [p for g in report.gpus for p in g.processes if p.pid in pids]
            if not holding:
                return round(time.monotonic() - started, 3), "released"
            if time.monotonic() >= deadline:
                return None, (f"still held after {self.settings.vram_release_timeout_s:g}s by "
                              + ", ".join(f"pid {p.pid}" for p in holding))
            time.sleep(0.1)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def launch(loaded, model: str, *, port: int | None = None, on_progress: Callable[[Progress], None] | None = None,
           on_dead: Callable[[Engine, str], None] | None = None, log_dir: Path | None = None,
           nvml_module: object | None = None) -> Engine:
    """An Engine for a configured model (not yet started): on `port`, else on engine.port
    when that is free, else on a free port."""
    from animllm_cli import paths
    from animllm_cli.config.engine_command import build_engine_command

    view = loaded.model(model)
    command = build_engine_command(loaded, view, port=port or free_port(loaded.config.engine.port))
    log_path = (log_dir or paths.state_dir() / "logs") / f"{view.name}.log"
    return Engine(view.name, command, log_path, loaded.config.engine, on_progress, on_dead, nvml_module)

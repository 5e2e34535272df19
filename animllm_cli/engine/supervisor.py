"""One vLLM engine process: start it, know when it is ready or why it failed, watch it,
and stop every process it made. It dies with its owner, whatever ends the owner: it is
started through `launcher.py`, whose watchdog ends the engine's group once the owner is
gone (an atexit hook alone misses SIGKILL, the OOM killer and a closed terminal).

Blocking calls, with threads for the output and the liveness probe, so that a CLI can use
it directly and an asyncio gateway through `asyncio.to_thread`.
"""

from __future__ import annotations

import atexit
import os
import secrets
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

from animllm_cli.engine.command import ENGINE_HOST, EngineCommand
from animllm_cli.config.schema import EngineSection
from animllm_cli.credentials import bearer
from animllm_cli.engine import deaths, diagnosis, launching, phases, processes
from animllm_cli.engine.logpipe import OutputPump
from animllm_cli.engine.standby import Standby, StandbyGone
from animllm_cli.errors import AnimllmError
from animllm_cli.gpu import nvml
from animllm_cli.units import MIB
from animllm_cli.wire import DeathKind, EngineDeath
TAIL_LINES = 30
CHECK_HEALTH_TIMEOUT_S = 2.0   # check(): a /health slower than this decides nothing (the watcher judges)
EXIT_WAIT_S = 1.0              # check(): how long an API server found dead may take to exit
# The processes an API server cannot serve without, by a part of their names (vLLM's
# setproctitle: VLLM::EngineCore, VLLM::EngineCore_DP0, VLLM::Worker_TP0): one of these
# gone is a death. Others of its tree (the multiprocessing resource tracker) may exit on their own.
NEEDED = ("EngineCore", "Worker")


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
    launched_by: str = "fresh"         # or "standby" (engine/standby.py)


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
    on_launched: Callable[["Engine"], None] | None = None  # its process exists (pid, created_at)
    standby: Standby | None = None           # a pre-started interpreter to run it in (the owner checked it fits)

    def __post_init__(self) -> None:
        self.port = self.command.port
        self.state = State.NEW
        self.death: EngineDeath | None = None
        self.created_at: float | None = None    # the engine process's creation time (tells a reused pid apart)
        self.watchdog_pid: int | None = None
        self._proc: subprocess.Popen | None = None
        self._launched: launching.Launched | None = None  # holds our end of the watchdog's pipe
        self.launched_by = "fresh"               # or "standby": a pre-started interpreter ran it
        self._stop_requested = threading.Event()
        self._pump: OutputPump | None = None
        # Every process of it seen so far. Read on several threads (the watcher, a request's
        # check, the teardown of a dead engine, NVML sampling) while others add to it: replaced
        # under the lock, never changed in place, so a reader iterates the dict it took.
        self._known: dict[int, psutil.Process] = {}
        self._known_lock = threading.Lock()
        self._needed: dict[int, str] = {}        # the NEEDED processes at ready, by name (a death says which are gone)
        self._lines_at_ready = 0
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
    def module(self) -> str:
        """The engine module its command line runs (`-m MODULE`)."""
        argv = self.command.argv
        return argv[argv.index("-m") + 1] if "-m" in argv else argv[0]

    @property
    def death_reason(self) -> str | None:
        return self.death.summary() if self.death else None

    @property
    def phase(self) -> str:
        return self._pump.phase if self._pump else "not started"

    def pids(self) -> set[int]:
        """Every live process of this engine, by group and by tree."""
        if not self._proc:
            return set()
        self._remember_tree()
        return processes.group_members(self._proc.pid) | processes.living(self._known)

    def pids_ever(self) -> set[int]:
        """Every process this engine has had, living or not: to pick its own out of an NVML
        reading taken a moment ago (one that ended since is still its own in that reading;
        asked for its living ones only, an engine whose processes are ending would leave
        their memory to "another process")."""
        if not self._proc:
            return set()
        self._remember_tree()
        return processes.group_members(self._proc.pid) | set(self._known) | {self._proc.pid}

    # ------------------------------------------------------------------ start
    def start(self) -> StartReport:
        """Launch and wait for /health 200. Raises EngineStartError with a diagnosis, and
        at once if `stop()` is called meanwhile (from another thread) or was called before."""
        with self._stop_lock:  # a stop either comes first (nothing is launched) or sees the process
            if self._stop_requested.is_set():
                raise self._stopped_error("stopped before it was started")
            read_fd = self._spawn()
        _LIVE.add(self)
        self.state = State.STARTING
        self._started_at = time.monotonic()
        self._pump = OutputPump(read_fd, self.log_path, max_bytes=self.settings.log_max_bytes,
                                started_at=self._started_at)
        try:
            if self.on_launched:
                self.on_launched(self)
            phases = self._wait_ready()
            with self._stop_lock:
                if self._stop_requested.is_set():  # ready just as a stop came: the stop wins
                    raise self._stopped_error("stopped while starting")
                self.state = State.READY
                self._took_ready()
        except BaseException:  # a failed start, a stop and Ctrl-C all leave nothing behind
            self.stop()
            raise
        threading.Thread(target=self._watch, name=f"engine-watch-{self.model}", daemon=True).start()
        return StartReport(self.model, self._proc.pid, self.port, time.monotonic() - self._started_at, phases,
                           self.launched_by)

    def _spawn(self) -> int:
        """Run the engine through the launcher (engine/launching.py), or hand it to the
        standby given (engine/standby.py); return the read end of its output pipe."""
        launched = self._from_standby()
        if launched is None:
            launched = launching.launch(self.command.argv, self.command.full_env(),
                                        grace_s=self.settings.stop_grace_s)
        self._launched, self._proc = launched, launched.proc
        self.watchdog_pid, self.created_at = launched.watchdog_pid, launched.created_at
        return launched.output_fd

    def _from_standby(self) -> "launching.Launched | None":
        if self.standby is None:
            return None
        try:
            launched, self.launched_by = self.standby.run(self.command), "standby"
        except StandbyGone:
            return None
        return launched

    def _took_ready(self) -> None:
        """From ready on, a death is told from what happened since: which of the processes
        it cannot serve without are gone (vLLM's EngineCore and workers, named by then),
        what its log said after this."""
        self._lines_at_ready = self._pump.seen
        found = processes.tree(self._proc.pid)
        self._add_known(found)
        self._needed = {pid: name for pid, name in processes.names(found).items()
                        if pid != self._proc.pid and any(part in name for part in NEEDED)}

    def _wait_ready(self) -> list[tuple[str, float]]:
        """Each phase and the second it began (read from the log as it came), then ready."""
        client = httpx.Client(timeout=2.0)
        try:
            while True:
                elapsed = time.monotonic() - self._started_at
                phase = self._pump.phase
                self._remember_tree()
                if self.on_progress:
                    tail = self._pump.lines(1)
                    self.on_progress(Progress(self.model, phase, elapsed, tail[0] if tail else None))
                if self._stop_requested.is_set():
                    raise self._stopped_error("stopped while starting")
                code = self._proc.poll()
                if code is not None:
                    self._pump.closed.wait(1.0)  # let the last lines arrive
                    raise self._start_error(f"the engine exited with code {code} while starting", "exited")
                if self._healthy(client):
                    self._check_it_is_ours(client)
                    ready_s = round(time.monotonic() - self._started_at, 3)
                    return [*self._pump.marks.timeline(), (phases.READY, ready_s)]
                silent = time.monotonic() - self._pump.last_output
                if silent > self.settings.stall_timeout_s:
                    raise self._start_error(f"no output for {silent:.0f}s in phase '{phase}' (stall_timeout_s "
                                            f"{self.settings.stall_timeout_s:g}); stopped it", "stalled",
                                            generic_fix="raise engine.stall_timeout_s if this model is just slow")
                if elapsed > self.settings.start_timeout_s:
                    raise self._start_error(f"not ready after {elapsed:.0f}s (start_timeout_s "
                                            f"{self.settings.start_timeout_s:g}), in phase '{phase}'", "timeout",
                                            generic_fix="raise engine.start_timeout_s if this model is just slow")
                self._stop_requested.wait(0.25)
        finally:
            client.close()

    def _check_it_is_ours(self, client: httpx.Client) -> None:
        """Ready means our engine answers on the port. First, one of its own processes
        must hold the listening socket (a process that took the port between our probe for
        a free one and vLLM's bind is not ours, and never learns the key); then it must
        refuse a wrong key and take its own."""
        ours = self.pids()
        holders = self._listeners(ours)
        if not holders & ours:
            code = self._proc.poll()
            if code is not None:  # it died during the check: that is the news, not the port
                self._pump.closed.wait(1.0)
                raise self._start_error(f"the engine exited with code {code} while starting", "exited")
            raise self._start_error(f"what listens on 127.0.0.1:{self.port} is not this engine (held by "
                                    f"{', '.join(map(str, sorted(holders))) or 'no process we can see'})", "not-ours",
                                    generic_fix="stop whatever else listens on that port, then retry")
        if self.command.api_key is None:
            return
        try:
            wrong_key = client.get(f"{self.base_url}/v1/models", headers=bearer(secrets.token_urlsafe(16))).status_code
            with_key = client.get(f"{self.base_url}/v1/models", headers=self.headers).status_code
        except httpx.HTTPError as exc:
            wrong_key, with_key = f"no answer ({exc})", None
        if (wrong_key, with_key) != (401, 200):
            raise self._start_error(f"the engine on 127.0.0.1:{self.port} does not check its key: /v1/models gave "
                                    f"{wrong_key} with a wrong key and {with_key} with its own (expected 401, 200)",
                                    "not-ours", generic_fix="check that the installed vLLM honours VLLM_API_KEY")

    def _listeners(self, ours: set[int]) -> set[int]:
        """The pids listening on the engine's port: among `ours` first, else any we may see."""
        found = set()
        for pid in ours:
            try:
                connections = psutil.Process(pid).net_connections(kind="inet")
            except psutil.Error:
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port for c in connections):
                found.add(pid)
        if found:
            return found
        try:  # not one of ours: name the holder where the system lets us see it
            return {c.pid for c in psutil.net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port and c.pid}
        except (psutil.Error, OSError):
            return set()

    @property
    def headers(self) -> dict[str, str]:
        """What every request to this engine carries: its own key."""
        return bearer(self.command.api_key)

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

    def explain(self, what: str) -> str:
        """`what` went wrong after start (a wake that failed, say), with the log's diagnosis
        when it has one and the last line otherwise."""
        error = self._start_error(what, "failed")
        return f"{error.reason}" + (f"; {error.fix}" if error.fix else "")

    def _stopped_error(self, what: str) -> EngineStartError:
        """Asked to stop (a closing gateway): no diagnosis, the log says nothing about it."""
        lines = self._pump.lines() if self._pump else []
        return EngineStartError(self.model, what, fix=None, kind="stopped", log_tail=lines[-TAIL_LINES:],
                                log_path=self.log_path)

    def _gpu_holders(self) -> str:
        report = nvml.probe(self.nvml_module)
        if report.error:
            return report.error
        held = [f"{p.name} (pid {p.pid}, {p.used_bytes // MIB if p.used_bytes else '?'} MiB)"
                for g in report.gpus for p in g.processes]
        return ", ".join(held) or "no process listed by NVML"

    def _remember_tree(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._add_known(processes.tree(self._proc.pid))

    def _add_known(self, found: dict[int, psutil.Process]) -> None:
        with self._known_lock:
            self._known = {**self._known, **found}

    # ------------------------------------------------------------------ liveness
    def _watch(self) -> None:
        failures = 0
        with httpx.Client(timeout=min(5.0, self.settings.health_interval_s * 2)) as client:
            while not self._watch_stop.wait(self.settings.health_interval_s):
                self._remember_tree()
                code = self._proc.poll()
                if code is not None:
                    return self._died(*deaths.exit_cause(code), status=code)
                failures = 0 if self._healthy(client) else failures + 1
                if failures >= self.settings.health_failures:
                    return self._died("unhealthy", f"/health failed {failures} times in a row")

    def check(self) -> EngineDeath | None:
        """Asked when a request to it failed: its death if it is dead, else None. Dead: its
        process exited, none of its processes holds its port any more, one of the processes
        it cannot serve without is gone (vLLM's EngineCore: its API server answers 500 then,
        and /health 200 for a while yet), or /health is refused or answers an error. A
        /health that does not answer in time decides nothing here: the watcher judges that
        over engine.health_failures probes. A death found here is taken as the watcher's is."""
        if self.state is State.READY:
            fault = self._fault()
            if fault is not None:
                self._died(*fault)
        return self.death

    def _fault(self) -> tuple[DeathKind, str, int | None] | None:
        """Why it is dead (what `check` finds), or None."""
        code = self._proc.poll()
        if code is None:
            wrong = self._wrong_while_running()
            if wrong is None:
                return None
            code = self._exit_status_soon()
            if code is None:
                return wrong
        return *deaths.exit_cause(code), code

    def _wrong_while_running(self) -> tuple[DeathKind, str, None] | None:
        """Why its API server, though it runs (or is still being torn down), is dead: its port
        not its own, a process it cannot serve without gone, /health refused or answering an error."""
        ours = self.pids()
        if not self._listeners(ours) & ours:
            return "unreachable", f"none of its processes listens on 127.0.0.1:{self.port} any more", None
        if self._gone():
            return "process-gone", "a process it ran with is gone", None
        try:
            status = httpx.get(f"{self.base_url}/health", timeout=CHECK_HEALTH_TIMEOUT_S).status_code
        except httpx.ConnectError:
            return "unreachable", f"127.0.0.1:{self.port} refuses connections", None
        except httpx.HTTPError:  # no answer in time: the watcher's to judge
            return None
        return ("unhealthy", f"/health answered {status}", None) if status != 200 else None

    def _exit_status_soon(self) -> int | None:
        """Its exit status, if it exits within EXIT_WAIT_S: a process being killed loses its
        sockets a moment before it can be reaped, and vLLM's API server exits soon after its
        EngineCore died; the exit is the better diagnosis."""
        try:
            return self._proc.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            return None

    def _died(self, kind: DeathKind, cause: str, status: int | None = None) -> None:
        """Dead after ready: say how (before its other processes are ended), tell the owner,
        then end what is left of it."""
        found = deaths.described(kind, cause, status=status, gone=self._gone(),
                                log=self._pump.lines_after(self._lines_at_ready))
        with self._stop_lock:  # one death, though the watcher and a request's check may find it at once
            if self.state is not State.READY:
                return
            self.state, self.death = State.DEAD, found
        if self.on_dead:
            self.on_dead(self, cause)
        # A hung engine would keep its connections (and so the gateway's slots) until their
        # timeouts, and its VRAM until the next switch: end its processes now, in a thread
        # of their own, so that a request's check has its answer at once. The engine stays
        # DEAD, with its death, until stop() finishes the teardown.
        threading.Thread(target=self._end_dead, name=f"engine-end-{self.model}", daemon=True).start()

    def _end_dead(self) -> None:
        with self._stop_lock:
            if self.state is State.DEAD:
                self._remember_tree()
                processes.end_group(self._proc.pid, self._known, self.settings.stop_grace_s)

    def _gone(self) -> list[str]:
        """The processes it cannot serve without (NEEDED, as at ready) that are gone now."""
        known = self._known
        living = processes.living({pid: known[pid] for pid in self._needed})
        return [f"{name} (pid {pid})" for pid, name in sorted(self._needed.items()) if pid not in living]

    # ------------------------------------------------------------------ stop
    def stop(self) -> StopReport:
        """SIGTERM the group, SIGKILL after the grace period, reap, confirm, then wait for
        the GPU to release the memory. Safe to call more than once, and from another thread
        while `start()` runs: that start then ends with EngineStartError (kind "stopped"),
        and one that has not launched yet launches nothing."""
        self._stop_requested.set()
        with self._stop_lock:
            if self._proc is None and self.standby is not None:
                self.standby.discard()  # handed to an engine that never started: not left waiting
                self.standby = None
            if self._proc is None or self.state is State.STOPPED:
                return StopReport(self.model, 0.0, False, [], None, "not running")
            started = time.monotonic()
            self._watch_stop.set()
            self._remember_tree()
            pgid = self._proc.pid
            gpu_pids = set(self._known) | {pgid}
            forced, left = processes.end_group(pgid, self._known, self.settings.stop_grace_s)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._release_watchdog(quietly=not left)
            stop_s = time.monotonic() - started
            if self._pump:
                self._pump.close()
            self.state = State.STOPPED
            _LIVE.discard(self)
            release_s, note = self._wait_vram_released(gpu_pids)
            return StopReport(self.model, round(stop_s, 3), forced, sorted(left), release_s, note)

    def _release_watchdog(self, *, quietly: bool) -> None:
        if self._launched is not None:
            self._launched.release_watchdog(quietly=quietly)

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
           nvml_module: object | None = None, on_launched: Callable[[Engine], None] | None = None,
           gpus: tuple[int, ...] | None = None, utilization: float | None = None,
           sleep_mode: bool = False, extra_env: dict[str, str] | None = None) -> Engine:
    """An Engine for a configured model (not yet started): on `port`, else on engine.port
    when that is free, else on a free port. `gpus` (NVML indices) and `utilization` are
    the pool's placement: the engine sees only those GPUs and takes that share of each.
    `sleep_mode`: it can be put to sleep (engine/sleep.py), so its server opens the
    development routes, on loopback only. `extra_env`: set on top of the configured
    environment (bench --startup's fresh caches)."""
    from animllm_cli import paths
    from animllm_cli.engine.command import PerLaunch, launch_command

    command = launch_command(loaded, model, PerLaunch(gpus=gpus, utilization=utilization, sleep_mode=sleep_mode),
                             port=port or free_port(loaded.config.engine.port))
    command.env.update(extra_env or {})
    name = loaded.model(model).name
    return Engine(name, command, paths.engine_log(name, log_dir), loaded.config.engine, on_progress, on_dead,
                  nvml_module, on_launched)

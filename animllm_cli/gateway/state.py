"""What the rest of animllm knows about a gateway without running one: the state file that
`status`/`switch`/`stop`/`chat` find it by, the loopback set, the API key and the bind
rules. A leaf: it imports nothing from the gateway, so clients and commands can read it
without loading the server stack."""

from __future__ import annotations

import json
import os
import shlex
import socket
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from pydantic import BaseModel

from animllm_cli import paths
from animllm_cli.config import LoadedConfig
from animllm_cli.errors import AnimllmError, UsageError

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass
class EngineGroup:
    """An engine the gateway runs, as the next `serve`/`stop` needs it should the gateway
    die without its cleanup: its process group, and the proof that a process is it (the
    leader's creation time, so that a reused pid is never taken for it, and its module)."""
    model: str
    pgid: int                         # the API server's pid, which is its group's id
    created_at: float | None          # the API server's creation time (psutil's create_time)
    module: str                       # the engine module its command line runs
    watchdog_pid: int | None = None


@dataclass
class GatewayState:
    pid: int
    url: str
    host: str
    port: int
    started_at: float
    log: str | None
    config_files: list[str]
    engines: list[EngineGroup] = field(default_factory=list)  # launched and not yet confirmed stopped
    cmdline: list[str] | None = None  # the gateway's own command line, recorded by write_state

    def __post_init__(self) -> None:
        self.engines = [EngineGroup(**e) if isinstance(e, dict) else e for e in self.engines]


def state_path() -> Path:
    return paths.state_dir() / "gateway.json"


def read_state() -> GatewayState | None:
    """The running gateway, if any. A state file left by a dead gateway is removed, unless
    it names engines: those wait for `serve`/`stop` to clean them (see read_dead_state)."""
    state = _read_state_file()
    if state is None or _alive_since(state.pid, state.started_at):
        if state is not None:
            _check_is_gateway(state)
        return state
    if not state.engines:
        remove_state(state.pid)
    return None


def read_dead_state() -> GatewayState | None:
    """The state file of a gateway that is gone, with the engines it had running."""
    state = _read_state_file()
    if state is None or _alive_since(state.pid, state.started_at):
        return None
    return state


def _read_state_file() -> GatewayState | None:
    path = state_path()
    try:
        text = _read_trusted(path)
    except FileNotFoundError:
        return None
    try:
        return GatewayState(**json.loads(text))
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)
        return None


def _alive_since(pid: int, started_at: float) -> bool:
    """The gateway's process still runs: same pid, and created before it wrote the file
    (a pid the kernel reused for another program was created later)."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= started_at + 1
    except psutil.Error:
        return False


def _read_trusted(path: Path) -> str:
    """The state file's text, if it is ours: `status`/`chat`/`stop`/`switch` send the API
    key to the URL it names, and `serve`/`stop` signal the processes it names. A file that
    someone else owns or may write, or a link, is refused and left where it is."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        problem = "it is a symbolic link" if os.path.islink(path) else f"cannot read it: {exc.strerror}"
        raise _untrusted(path, problem) from None
    with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _untrusted(path, "it is not a regular file")
        if info.st_uid != os.getuid():
            raise _untrusted(path, f"it belongs to uid {info.st_uid}, not to you (uid {os.getuid()})")
        if info.st_mode & 0o022:
            raise _untrusted(path, f"others may write it (mode {stat.S_IMODE(info.st_mode):04o})")
        return handle.read()


def _untrusted(path: Path, problem: str) -> AnimllmError:
    return AnimllmError(f"not using the gateway state file {path}: {problem}",
                        hint="animllm sends the API key to the address that file names; if no gateway of yours "
                             "runs, find out who wrote it, then remove it")


def _cmdline(pid: int) -> list[str] | None:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return None


def _check_is_gateway(state: GatewayState) -> None:
    """The live process the file names is the gateway that wrote it: the same command line
    as it recorded (a gateway run from any launcher, a test harness included), or, for a
    file without that record, an `animllm ... serve` command line."""
    live = _cmdline(state.pid)
    if state.cmdline is not None:
        ours = live == state.cmdline
    else:
        ours = live is not None and any("animllm" in arg for arg in live) and "serve" in live
    if not ours:
        seen = "unreadable" if live is None else shlex.join(live)[:200]
        raise _untrusted(state_path(), f"its pid {state.pid} is not the gateway that wrote it "
                                       f"(that process's command line: {seen})")


def write_state(state: GatewayState) -> None:
    """Write the state file, 0600 in a 0700 directory, with the gateway's command line."""
    path = state_path()
    if state.cmdline is None and state.pid == os.getpid():
        state.cmdline = _cmdline(state.pid)
    tmp = path.with_suffix(".tmp")
    with paths.open_private(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(state), indent=2))
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


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def bind_error(host: str, port: int) -> str | None:
    """Why the gateway could not listen on host:port right now, or None if it could."""
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


# --------------------------------------------------------------------------- the admin API's answers
# One typed form each, written by the gateway and read by the commands; their JSON is the
# README's documented schema (`status --json`, `switch --json`).

class Report(BaseModel):
    def to_json(self) -> dict:
        return self.model_dump(mode="json")


class SwitchReport(Report):
    from_model: str | None            # the first model evicted, if any
    to_model: str | None              # None: an unload
    outcome: str                      # ok | failed | already loaded
    evicted: list[str] = []           # every model evicted to make room (stopped, or asleep: see slept), LRU first
    gpus: list[int] = []              # where the model was placed
    reason: str | None = None         # why: cold | beside | idle | max_wait | admin | arrival_order | keep_alive | unload
    chosen_by: str | None = None      # why this model: only | oldest | priority | more_work | overdue | explicit | arrival_order
    stop_s: float | None = None
    vram_release_s: float | None = None
    load_s: float | None = None
    total_s: float | None = None
    vram_free_before: int | None = None
    vram_free_after: int | None = None
    vram_note: str | None = None
    error: str | None = None
    finished_at: float | None = None  # wall clock
    # vLLM sleep mode (engine/sleep.py): the evicted that went to sleep rather than stop,
    # and whether the model woke (load_kind "wake") or started ("cold").
    slept: list[str] = []
    sleep_s: float | None = None      # the longest of their sleeps
    load_kind: str | None = None      # wake | cold (None: nothing loaded)
    wake_s: float | None = None
    wake_level: int | None = None
    wake_error: str | None = None     # a wake that failed (then it started cold), with its diagnosis
    notes: list[str] = []             # why a model was stopped rather than sent to sleep


class EngineStatus(Report):
    model: str | None
    state: str                        # none | starting | ready | draining | sleeping | waking | switching | stopping | dead | stopped
    switching_to: str | None = None
    phase: str | None = None
    engine_pid: int | None = None
    engine_url: str | None = None
    death_reason: str | None = None
    log_path: str | None = None
    loaded_since: float | None = None
    last_switch: SwitchReport | None = None
    # The pool's view of one resident engine (`animllm ps`):
    gpus: list[int] = []
    share: float | None = None        # the gpu_memory_utilization it runs with
    vram_bytes: int | None = None     # what NVML shows its processes hold now (None: not measured)
    vram_planned_bytes: int | None = None  # the plan's estimate
    vram_peak_bytes: int | None = None     # the most NVML showed it hold since it became ready
    in_flight: int = 0
    waiting: int = 0
    idle_s: float | None = None       # how long it has had nothing running or waiting
    pinned: bool = False
    keep_alive_s: float | None = None
    unload_in_s: float | None = None  # when keep_alive unloads it, if it stays idle
    can_sleep: bool = False           # launched with vLLM's sleep mode (evicting it may put it to sleep)
    sleep_level: int | None = None    # asleep at this level (state "sleeping")
    host_bytes: int | None = None     # its weights in host RAM while asleep at level 1


class GpuMemory(Report):
    index: int
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int


class VramStatus(Report):
    gpus: list[GpuMemory] = []
    error: str | None = None


class GatewayProcess(Report):
    pid: int
    uptime_s: float


class ModelQueue(Report):
    waiting: int
    oldest_wait_s: float              # how long the oldest of them has waited


class SleepModeStatus(Report):
    available: bool
    reason: str                       # why (not): the engine's vLLM build, its version, the GPU
    host_available_bytes: int | None = None  # host RAM free now (level-1 sleepers take their weights' size)


class UpstreamStatus(Report):
    url: str
    healthy: bool | None              # None: not checked yet
    problem: str | None = None        # why it is out of rotation
    outstanding: int = 0              # requests sent to it and not answered in full yet
    sent: int = 0
    checked_at: float | None = None   # wall clock of the last health check


class RemoteStatus(Report):
    """A model served elsewhere (`upstream`): never loaded or evicted here."""
    model: str
    served_name: str                  # its name on the upstream servers
    key_env: str | None = None        # the variable holding their key (never the key)
    key_problem: str | None = None    # that variable is not set
    in_flight: int = 0
    waiting: int = 0
    upstreams: list[UpstreamStatus] = []


class StatusReport(Report):
    schema_version: int = 1
    url: str | None = None            # filled in by the client from the state file
    gateway: GatewayProcess
    engine: EngineStatus              # the model loaded last (or being loaded): the single-slot view
    engines: list[EngineStatus] = []  # every engine of the pool (`animllm ps`)
    queue_depth: int
    in_flight: int
    queues: dict[str, ModelQueue] = {}  # model -> its waiting requests
    backoff: dict[str, float] = {}    # model -> seconds left
    busy: str | None = None           # why requests are refused, or None
    vram: VramStatus
    sleep_mode: SleepModeStatus | None = None  # whether evicted engines can sleep here (vLLM sleep mode)
    remotes: list[RemoteStatus] = []  # the models served elsewhere, and their URLs' health
    recent_switches: list[SwitchReport] = []  # the latest switches and unloads, oldest first (`animllm top`)


class SwitchHistory(Report):
    """`GET /admin/switches[?since=T]`: the switches and unloads the gateway kept (oldest
    first), those finished after wall-clock time T if given (`bench --mix`)."""
    recorded: int                     # since the gateway started; more than capacity: the oldest fell out
    capacity: int                     # how many the gateway keeps
    switches: list[SwitchReport] = []


class StopAnswer(Report):
    stopping: bool
    engine_pids: list[int] = []


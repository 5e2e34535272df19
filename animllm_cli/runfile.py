"""The run file: what `status`/`switch`/`stop`/`chat` find a gateway by, and what the next
`serve`/`stop` needs to clean up after one that died (its engines' process groups).

Every function takes the state directory it works in (None: the user's, paths.state_dir()),
so that a program running a gateway of its own (the demo) reads that one's file without
touching the environment. A leaf: it imports nothing from the gateway."""

from __future__ import annotations

import json
import os
import shlex
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from animllm_cli import paths
from animllm_cli.errors import AnimllmError


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


def state_path(state_dir: Path | None = None) -> Path:
    return (state_dir or paths.state_dir()) / "gateway.json"


def read_state(state_dir: Path | None = None) -> GatewayState | None:
    """The running gateway, if any. A state file left by a dead gateway is removed, unless
    it names engines: those wait for `serve`/`stop` to clean them (see read_dead_state)."""
    state = _read_state_file(state_dir)
    if state is None or _alive_since(state.pid, state.started_at):
        if state is not None:
            _check_is_gateway(state, state_dir)
        return state
    if not state.engines:
        remove_state(state.pid, state_dir)
    return None


def read_dead_state(state_dir: Path | None = None) -> GatewayState | None:
    """The state file of a gateway that is gone, with the engines it had running."""
    state = _read_state_file(state_dir)
    if state is None or _alive_since(state.pid, state.started_at):
        return None
    return state


def _read_state_file(state_dir: Path | None) -> GatewayState | None:
    path = state_path(state_dir)
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


def _check_is_gateway(state: GatewayState, state_dir: Path | None) -> None:
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
        raise _untrusted(state_path(state_dir), f"its pid {state.pid} is not the gateway that wrote it "
                                       f"(that process's command line: {seen})")


def write_state(state: GatewayState, state_dir: Path | None = None) -> None:
    """Write the state file, 0600 in a 0700 directory, with the gateway's command line."""
    path = state_path(state_dir)
    if state.cmdline is None and state.pid == os.getpid():
        state.cmdline = _cmdline(state.pid)
    tmp = path.with_suffix(".tmp")
    with paths.open_private(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(state), indent=2))
    tmp.replace(path)


def remove_state(pid: int, state_dir: Path | None = None) -> None:
    path = state_path(state_dir)
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (FileNotFoundError, ValueError):
        pass


def ensure_not_running(state_dir: Path | None = None) -> None:
    running = read_state(state_dir)
    if running:
        raise AnimllmError(f"a gateway is already running (pid {running.pid}, {running.url})",
                           hint="`animllm status` shows it; `animllm stop` stops it")

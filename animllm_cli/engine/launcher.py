"""Start an engine that dies with its owner, whatever ends the owner.

The supervisor runs this file by path, in a new session:

    python -I -S launcher.py WATCH_FD READY_FD GRACE_S -- ENGINE_ARGV...

It forks a watchdog, then execs the engine in its own place, so that the engine keeps
this pid, this process group and the output pipe, and its owner can wait for it as its
child. The watchdog holds the read end of a pipe whose write end only the owner holds.
The kernel closes that end whenever the owner goes, for any reason (an exit, SIGKILL, the
OOM killer, a closed terminal), and the watchdog then ends the engine's process group:
SIGTERM, the grace period, SIGKILL. An owner that stopped the engine itself writes
`OWNER_STOPPED` first, and the watchdog leaves without a signal.

On READY_FD the launcher writes `watchdog PID`, then `error MESSAGE` if the engine cannot
be executed; the owner reads it to end of file, which comes when the exec succeeds (the
descriptor is closed on exec) or the launcher exits.

Standard library only, and run with -I -S: it must start in milliseconds, and the
environment it passes on (PYTHONPATH, PYTHONHOME) is meant for vLLM, not for it.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

OWNER_STOPPED = b"x"
PROBE_S = 0.5      # how often the watchdog checks that the engine's group still exists
KILL_WAIT_S = 5.0  # after SIGKILL, how long to wait for the group to go


def main(argv: list[str]) -> None:
    watch_fd, ready_fd, grace_s = int(argv[1]), int(argv[2]), float(argv[3])
    engine_argv = argv[argv.index("--") + 1:]
    pgid = os.getpid()  # a new session: our pid is the group's id, and stays the engine's after exec
    _spawn_watchdog(watch_fd, ready_fd, pgid, grace_s)
    os.close(watch_fd)  # the engine must not hold it: only the watchdog reads it
    os.set_inheritable(ready_fd, False)  # so that the exec closes it: the owner's sign of success
    try:
        os.execvp(engine_argv[0], engine_argv)
    except OSError as exc:
        os.write(ready_fd, f"error {exc.strerror or exc}\n".encode())
        os._exit(127)


def _spawn_watchdog(watch_fd: int, ready_fd: int, pgid: int, grace_s: float) -> None:
    """Fork twice, so that the watchdog is neither in the engine's group (stopping the
    group spares it, and it is not counted as an engine process) nor its child (the
    engine's process tree never lists it, and no zombie is left under vLLM)."""
    middle = os.fork()
    if middle:
        os.waitpid(middle, 0)
        return
    try:
        os.setsid()
        watchdog = os.fork()
        if watchdog:
            os.write(ready_fd, f"watchdog {watchdog}\n".encode())
        else:
            _become_quiet(watch_fd)
            _watch(watch_fd, pgid, grace_s)
    finally:
        os._exit(0)


def _become_quiet(keep_fd: int) -> None:
    """No output into the engine's log, and no descriptor of the owner's or the engine's
    kept open (the output pipe would never reach end of file while we held it)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX"))
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def _watch(watch_fd: int, pgid: int, grace_s: float) -> None:
    while True:
        if select.select([watch_fd], [], [], PROBE_S)[0]:
            try:
                message = os.read(watch_fd, 1)
            except OSError:
                message = b""
            if message != OWNER_STOPPED:  # end of file: the owner is gone
                _end_group(pgid, grace_s)
            return
        if not _group_exists(pgid):
            # The engine is gone and its group id is free for the kernel to reuse: a
            # watchdog that outlived it could one day signal a stranger's group.
            return


def _end_group(pgid: int, grace_s: float) -> None:
    """processes.end_group's rule, in the standard library alone: this file runs in the
    engine's interpreter, which need not have psutil (see the module docstring)."""
    _signal_group(pgid, signal.SIGTERM)
    if _wait_gone(pgid, grace_s):
        return
    _signal_group(pgid, signal.SIGKILL)
    _wait_gone(pgid, KILL_WAIT_S)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _group_exists(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


if __name__ == "__main__":
    main(sys.argv)

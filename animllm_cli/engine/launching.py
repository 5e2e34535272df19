"""The owner's side of launcher.py: run a command through the launcher, so that it stays
our child, in its own process group (its pid is the group's id), writing into a pipe whose
read end we keep, and dies with us whatever ends us (the watchdog holds a pipe only we can
write to). An engine is started this way, and so is a standby (engine/standby.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import psutil

from animllm_cli.engine import launcher
from animllm_cli.errors import AnimllmError

LAUNCHER = Path(__file__).with_name("launcher.py")


@dataclass
class Launched:
    proc: subprocess.Popen
    output_fd: int               # the read end of its stdout and stderr
    watchdog_fd: int             # our end of the watchdog's pipe: closing it ends the group
    watchdog_pid: int | None
    created_at: float | None     # the process's creation time (tells a reused pid apart)

    def release_watchdog(self, *, quietly: bool) -> None:
        """Close our end of the watchdog's pipe. `quietly`: the command is gone, so tell
        the watchdog to leave without a signal (its group id is free for reuse now);
        otherwise the bare close makes it end the group."""
        fd, self.watchdog_fd = self.watchdog_fd, -1
        if fd < 0:
            return
        try:
            if quietly:
                os.write(fd, launcher.OWNER_STOPPED)
        except OSError:  # it has left already (it saw the group go)
            pass
        finally:
            os.close(fd)


def launch(argv: list[str], env: Mapping[str, str], *, grace_s: float, stdin: int | None = subprocess.DEVNULL,
           pass_fds: tuple[int, ...] = ()) -> Launched:
    """Run `argv` through the launcher. Waits until the launcher has exec'd it
    (milliseconds), which also reports an interpreter that cannot run."""
    out_r, out_w = os.pipe()
    watch_r, watch_w = os.pipe()   # not inheritable: no other child of ours gets our end
    ready_r, ready_w = os.pipe()
    command = [sys.executable, "-I", "-S", str(LAUNCHER), str(watch_r), str(ready_w), f"{grace_s:g}", "--", *argv]
    try:
        proc = subprocess.Popen(command, env=dict(env), stdin=stdin, stdout=out_w, stderr=out_w,
                                start_new_session=True, pass_fds=(watch_r, ready_w, *pass_fds))
    except BaseException:
        for fd in (out_r, watch_w, ready_r):
            os.close(fd)
        raise
    finally:
        for fd in (out_w, watch_r, ready_w):
            os.close(fd)
    with os.fdopen(ready_r, "rb") as ready:
        report = ready.read().decode(errors="replace").splitlines()
    launched = Launched(proc, out_r, watch_w, None, None)
    for line in report:
        kind, _, value = line.partition(" ")
        if kind == "watchdog":
            launched.watchdog_pid = int(value)
        elif kind == "error":
            proc.wait()  # the launcher, reaped; the watchdog let go
            os.close(out_r)
            launched.release_watchdog(quietly=True)
            raise AnimllmError(f"cannot run the engine interpreter {argv[0]}: {value}",
                               hint="set engine.python to an interpreter that has vLLM")
    try:
        launched.created_at = psutil.Process(proc.pid).create_time()
    except psutil.Error:  # it exited already: whoever waits for it reports it
        pass
    return launched

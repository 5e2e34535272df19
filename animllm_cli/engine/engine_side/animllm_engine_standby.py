"""A pre-started engine: the API server's interpreter, started and its imports done ahead
of time, waiting holding no GPU memory, then running vLLM's server for the model the
gateway names. Runs in the engine's interpreter (standard library only, as
animllm_engine_guard.py), through the supervisor's launcher (it dies with its owner):

    python -m animllm_engine_standby MODULE REPORT_FD ROOM

It imports MODULE (vLLM's OpenAI server: Python, vLLM and torch, some seconds of every
cold start), writes one line on REPORT_FD ("imported SECONDS", or "failed: ERROR") and
closes it, then reads
one line of JSON on stdin: {"argv": [...], "env": {...}}, the engine's arguments (after
`-m MODULE`) and its whole environment. It takes that environment and runs MODULE as
`python -m MODULE ARGV` would (runpy, as __main__). Reading stdin to its end without a
line is the owner's "not needed": it exits.

From then on its command line (/proc/PID/cmdline: `ps`, psutil) is the engine's own, as a
plain start's would be (its arguments joined by spaces, as setproctitle shows a title):
ROOM (blanks) reserves the space, which is written in place through /proc/self/mem. Not setproctitle: it clears the environment's memory, and /proc/PID/environ
is what other processes read of an engine (its GPUs, for one).

What the import reads from the environment must be the engine's too: the supervisor only
sends an engine here whose environment differs from the standby's in variables read later
(engine/standby.py, LATE_VARIABLES). torch reads CUDA_VISIBLE_DEVICES when CUDA starts,
not at import, and importing vLLM starts no CUDA (vLLM itself requires that: its spawned
EngineCore would fail on an initialised CUDA).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
import traceback
import warnings


def main(module: str, report_fd: int) -> None:
    started = time.monotonic()
    try:
        __import__(module)
    except BaseException as exc:  # reported, then the owner starts the engine the plain way
        traceback.print_exc()  # into the log of the engine it was meant for
        _report(report_fd, f"failed: {type(exc).__name__}: {exc}")
        raise SystemExit(1)
    _report(report_fd, f"imported {time.monotonic() - started:.2f}")
    line = sys.stdin.readline()
    if not line.strip():
        raise SystemExit(0)  # not needed after all
    order = json.loads(line)
    os.environ.clear()
    os.environ.update(order["env"])
    _show_command_line([sys.executable, "-m", module, *order["argv"]])
    sys.argv = [module, *order["argv"]]  # runpy puts the module's file in argv[0]
    # runpy warns that the module was imported before it runs as __main__: that import is the point.
    warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package", category=RuntimeWarning)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _report(fd: int, line: str) -> None:
    """Tell the owner; one that handed us the engine before our imports ended has stopped listening."""
    try:
        with os.fdopen(fd, "w") as report:
            report.write(line + "\n")
    except OSError:
        pass


def _show_command_line(argv: list[str]) -> None:
    """Write `argv` over our own, in the memory the kernel shows as /proc/self/cmdline
    (its bounds are fields 48 and 49 of /proc/self/stat), as setproctitle does: the
    arguments joined by spaces, ended by a NUL, the rest of the room left non-NUL, which
    tells the kernel to show the title up to its NUL (psutil then splits it at the spaces).
    Left as it is where it does not fit, or where /proc/self/mem cannot be written."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])
        title = " ".join(argv).encode() + b"\0"
        if len(title) >= end - start:
            return
        with open("/proc/self/mem", "r+b", buffering=0) as memory:
            memory.seek(start)
            memory.write(title.ljust(end - start, b" "))
    except (OSError, ValueError, IndexError):
        return


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))  # sys.argv[3]: the room for the engine's command line

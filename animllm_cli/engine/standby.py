"""A standby: the next engine's interpreter, started ahead of time with its imports done,
so that a cold start begins where a plain one is some seconds in (the API server's Python
start-up, vLLM and torch imported: engine_side/animllm_engine_standby.py). It holds no GPU
memory while it waits, and it dies with its owner as an engine does (engine/launching.py).

A standby serves an engine whose command runs the same interpreter and module, and whose
environment differs from the standby's only in LATE_VARIABLES: what the import may have
read must be what the engine would have had. Anything else is a plain start.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import threading
import time
from typing import Mapping

from animllm_cli.engine import launching, processes
from animllm_cli.engine.command import ENGINE_SIDE, EngineCommand

log = logging.getLogger(__name__)
STANDBY_MODULE = "animllm_engine_standby"
COMMAND_LINE_ROOM = 16384  # bytes kept in the standby's argv for the engine's command line, shown once it runs
# In the standby's own environment only (what /proc shows of it), not in the engine's: says
# that this process began as a standby, so its creation time is not its start's.
STANDBY_MARK = "ANIMLLM_STANDBY"
# Variables set per launch that nothing reads at import: the engine's own key, vLLM's
# development mode (read when the server builds its routes), and pytest's record of the
# current test (a harness's). Not the GPUs (CUDA_VISIBLE_DEVICES), though torch reads them
# only when CUDA starts: what other processes read of an engine's environment is what /proc
# shows, the standby's as it began, so a standby serves engines on the GPUs it was made for.
LATE_VARIABLES = frozenset({"VLLM_API_KEY", "VLLM_SERVER_DEV_MODE", "PYTEST_CURRENT_TEST"})


def _early(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in LATE_VARIABLES}


class StandbyGone(Exception):
    """The standby could not take the engine: the start is a plain one."""


class Standby:
    def __init__(self, command: EngineCommand, *, grace_s: float) -> None:
        """Start a standby for engines like `command` (its interpreter, module and environment)."""
        self.python, self.module = command.argv[0], command.module
        env = command.full_env()
        if str(ENGINE_SIDE) not in env.get("PYTHONPATH", "").split(os.pathsep):
            raise ValueError("a standby runs engines that import from engine_side/ (launch_command puts it "
                             "on PYTHONPATH)")
        self._env = env
        report_r, report_w = os.pipe()
        stdin_r, stdin_w = os.pipe()
        try:
            self.launched = launching.launch([self.python, "-m", STANDBY_MODULE, self.module, str(report_w),
                                              " " * COMMAND_LINE_ROOM], {**_early(env), STANDBY_MARK: "1"},
                                             grace_s=grace_s, stdin=stdin_r, pass_fds=(report_w,))
        except BaseException:
            for fd in (report_r, stdin_w):
                os.close(fd)
            raise
        finally:
            os.close(report_w)
            os.close(stdin_r)
        self._report_fd, self._stdin_fd = report_r, stdin_w
        self.started_at = time.monotonic()
        self.import_s: float | None = None
        self.failure: str | None = None
        self._lock = threading.Lock()

    def usable(self) -> bool:
        """Alive, and its imports did not fail (a failure it has not reported yet is found
        when it is handed an engine: the start is then a plain one)."""
        self.imported(0)
        return not self.failure and self.launched.proc.poll() is None

    def fits(self, command: EngineCommand) -> bool:
        """Whether `command` can run here: same interpreter and module, same environment
        but for LATE_VARIABLES."""
        return (self.usable() and (command.argv[0], command.module) == (self.python, self.module)
                and _early(self._env) == _early(command.full_env()))

    def imported(self, timeout_s: float | None = 0) -> bool:
        """Whether its imports are done (waiting up to `timeout_s`; None: until they end)."""
        with self._lock:
            if self.import_s is not None or self.failure:
                return self.import_s is not None
            if not select.select([self._report_fd], [], [], timeout_s)[0]:
                return False
            line = os.read(self._report_fd, 4096).decode(errors="replace").strip()
            kind, _, value = line.partition(" ")
            if kind == "imported":
                self.import_s = float(value)
            else:
                self.failure = line or "exited before its imports ended"
            return self.import_s is not None

    def run(self, command: EngineCommand) -> launching.Launched:
        """Hand it the engine: from here on it is that engine's process."""
        order = {"argv": command.argv[command.argv.index("-m") + 2:], "env": command.full_env()}
        try:
            if not self.usable():
                raise OSError(self.failure or "it exited")
            os.write(self._stdin_fd, (json.dumps(order) + "\n").encode())
        except OSError as exc:  # it died since it was judged to fit (its import failed, a kill)
            self.discard()
            raise StandbyGone(f"the standby (pid {self.launched.proc.pid}) is gone: {exc}") from exc
        self._close_fds()
        return self.launched

    def discard(self) -> None:
        """Not needed: it reads the end of its input and exits; the group ends regardless."""
        self._close_fds()
        proc = self.launched.proc
        if proc.poll() is None:  # once reaped, its group id is free for the kernel to reuse: no signal
            processes.end_group(proc.pid, {}, 5.0)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.launched.release_watchdog(quietly=True)
        if self.launched.output_fd >= 0:
            os.close(self.launched.output_fd)
            self.launched.output_fd = -1

    def _close_fds(self) -> None:
        for name in ("_stdin_fd", "_report_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


class Keeper:
    """The gateway's one standby (engine.standby): made after each start, for the next one,
    and taken by the next start that it fits. One made for other GPUs is kept for a start on
    those (a start elsewhere is a plain one); one that died or failed is ended and replaced.
    After `close()` it makes none."""

    def __init__(self, *, enabled: bool, grace_s: float) -> None:
        self.enabled, self.grace_s = enabled, grace_s
        self._standby: Standby | None = None
        self._closed = False
        self._lock = threading.Lock()

    def take(self, command: EngineCommand) -> Standby | None:
        """The standby, if it fits `command` (then it is no longer kept). Never blocks:
        a dead one is ended in a thread of its own."""
        with self._lock:
            standby = self._standby
            if standby is None:
                return None
            if not standby.usable():
                self._standby = None
                _discard_aside(standby)
                return None
            if not standby.fits(command):
                return None
            self._standby = None
            return standby

    def refill(self, command: EngineCommand) -> None:
        """Start a standby for engines like `command`, unless a usable one waits already.
        A standby that cannot start is no error: the next start is a plain one."""
        if not self.enabled:
            return
        with self._lock:
            if self._closed or (self._standby is not None and self._standby.usable()):
                return
            if self._standby is not None:
                _discard_aside(self._standby)
            self._standby = None
            try:
                self._standby = Standby(command, grace_s=self.grace_s)
            except Exception as exc:  # noqa: BLE001 - the plain start is the fallback
                log.warning("no standby for the next engine: %s", exc)

    def close(self) -> None:
        with self._lock:
            standby, self._standby, self._closed = self._standby, None, True
        if standby is not None:
            standby.discard()

    @property
    def waiting(self) -> Standby | None:
        return self._standby


def _discard_aside(standby: Standby) -> None:
    threading.Thread(target=standby.discard, name="standby-discard", daemon=True).start()

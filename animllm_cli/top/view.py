"""The refresh loop of `animllm top`: a reader thread takes a scrape every interval, the
main thread draws the newest snapshot and listens for `q`.

Why a thread: an HTTP answer or an NVML call can take longer than a refresh (a gateway
that hangs, a busy driver); the screen and the keys must not wait for it. The main
thread wakes every TICK_S to read keys and to redraw when a snapshot arrived or the
terminal was resized.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from typing import Any, Callable

from animllm_cli.top.snapshot import Reader, Scrape, Snapshot, snapshot

TICK_S = 0.1               # how soon `q`, a resize or a new snapshot shows
QUIT_KEYS = (b"q", b"Q")


class Sampler:
    """Scrapes every `interval_s` in a daemon thread; `latest` is the newest snapshot (the
    newest scrape compared with the one before it). A scrape that takes longer than the
    interval delays the next one, never the view."""

    def __init__(self, reader: Reader, interval_s: float) -> None:
        self.reader, self.interval_s = reader, interval_s
        self.latest: Snapshot | None = None
        self.failure: Exception | None = None  # what stopped the thread (a bug, not a silent gateway)
        self.fresh = threading.Event()    # set when `latest` changed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="animllm-top-sampler", daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        # Each scrape is bounded (HTTP_TIMEOUT_S); a daemon thread never holds the exit anyway.
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        previous: Scrape | None = None
        try:
            while not self._stop.is_set():
                current = self.reader.read()
                self.latest = snapshot(current, previous)
                self.fresh.set()
                previous = current
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - current.at)))
        except Exception as exc:  # the view must not freeze on a stale snapshot: it ends, saying why
            self.failure = exc
        finally:
            self.reader.close()


class Leave(Exception):
    """SIGTERM: leave the view the way `q` does, through every `finally`."""


class Keys:
    """Single key presses from stdin, without Enter and without blocking: the terminal in
    cbreak mode (no line buffering, no echo; Ctrl-C still interrupts) while in use, and
    restored as it was in any case. Stdin that is not a terminal (a pipe, `ssh -T`) is
    not read: the view then runs until Ctrl-C or SIGTERM."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._saved: Any = None

    def __enter__(self) -> "Keys":
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):  # no real stdin (a test runner's, a closed one)
            return self
        if os.isatty(fd):
            import termios
            import tty

            self._fd, self._saved = fd, termios.tcgetattr(fd)
            tty.setcbreak(fd, termios.TCSANOW)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)

    def quit_pressed(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for keys; True when one of them is `q`."""
        if self._fd is None:
            time.sleep(timeout_s)
            return False
        ready, _, _ = select.select([self._fd], [], [], timeout_s)
        if not ready:
            return False
        typed = os.read(self._fd, 64)
        if not typed:  # the terminal went away (hang-up): stop reading it
            self._fd = None
            return False
        return any(key in typed for key in QUIT_KEYS)


def run(sampler: Sampler, draw: Callable[[Snapshot], None], *, size: Callable[[], tuple[int, int]],
        every_snapshot_only: bool = False) -> None:
    """Draw each new snapshot (and again on a resize) until `q`, Ctrl-C or SIGTERM, which
    all return normally: leaving top is not a failure. `every_snapshot_only`: a stream
    (not a terminal) gets each snapshot once, never a redraw."""
    from animllm_cli.signals import sigterm_raises

    with sigterm_raises(Leave), Keys() as keys, sampler:
        try:
            shown_size = None
            while True:
                if sampler.failure is not None:
                    from animllm_cli.errors import AnimllmError

                    raise AnimllmError(f"top stopped: reading the gateway and GPUs failed: {sampler.failure!r}")
                if sampler.latest is not None and (sampler.fresh.is_set() or
                                                   (not every_snapshot_only and size() != shown_size)):
                    sampler.fresh.clear()
                    shown_size = size()
                    draw(sampler.latest)
                if keys.quit_pressed(TICK_S):
                    return
        except (KeyboardInterrupt, Leave):
            return

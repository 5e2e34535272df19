"""SIGTERM handled as an interruption, for commands that own a terminal or child processes."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


@contextlib.contextmanager
def sigterm_raises(exception: type[BaseException]) -> Iterator[None]:
    """While the block runs, SIGTERM raises `exception`, so that `kill` unwinds through
    every `finally` (a restored terminal, stopped children) as Ctrl-C does. Off the main
    thread, where Python takes no signal handler, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_it(signum, frame) -> None:
        raise exception()

    previous = signal.signal(signal.SIGTERM, raise_it)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

"""Read the engine's output from its pipe: into a size-bounded log file, a tail kept in
memory for diagnosis, the start-up phase (and when each began), and the time of the last output (stall
detection). A daemon thread, so a grandchild that keeps the pipe open can never keep the
owner waiting; the supervisor decides on exits from the process, never from EOF."""

from __future__ import annotations

import collections
import logging
import os
import re
import select
import threading
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path

from animllm_cli import paths
from animllm_cli.engine import phases

_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # tqdm progress bars redraw with \r


class _PrivateRotatingFileHandler(RotatingFileHandler):
    """A RotatingFileHandler whose files are 0600 (see paths.open_private)."""

    def _open(self):
        for older in Path(self.baseFilename).parent.glob(Path(self.baseFilename).name + ".*"):
            paths.private_file(older)  # a rotated copy left by an older version
        return paths.open_private(Path(self.baseFilename), self.mode, encoding=self.encoding, errors=self.errors)


class OutputPump:
    def __init__(self, fd: int, log_path: Path, *, max_bytes: int, tail_lines: int = 400,
                 started_at: float | None = None) -> None:
        paths.private_dir(log_path.parent)
        # A private logger (not in logging's registry) whose handler bounds the file and
        # keeps one rotated copy beside it; both only their owner may read (prompts and
        # model output end up in engine logs).
        self._handler = _PrivateRotatingFileHandler(log_path, maxBytes=max_bytes, backupCount=1, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._log = logging.Logger(f"animllm.engine.{log_path.stem}")
        self._log.addHandler(self._handler)
        self._log.setLevel(logging.INFO)
        self._fd = fd
        self._stop = threading.Event()
        self.log_path = log_path
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.seen = 0                          # lines read so far (the tail keeps the latest)
        self.phase = phases.ORDER[0]
        self.last_output = time.monotonic()
        self.started_at = self.last_output if started_at is None else started_at
        self.marks = phases.Marks()            # when each phase began, for the start's breakdown
        self.closed = threading.Event()
        self._partial = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"engine-output-{log_path.stem}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                # select with a timeout, so that close() can end the thread even while a
                # stray process keeps the write end of the pipe open.
                if not select.select([self._fd], [], [], 0.2)[0]:
                    continue
                try:
                    chunk = os.read(self._fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                self._feed(chunk.decode("utf-8", errors="replace"))
        finally:
            if self._partial:
                self._line(self._partial)
            self.closed.set()

    def _feed(self, text: str) -> None:
        self.last_output = time.monotonic()
        parts = _LINE_BREAK.split(self._partial + text)
        self._partial = parts.pop()
        for line in parts:
            if line.strip():
                self._line(line)

    def _line(self, line: str) -> None:
        with self._lock:
            self.tail.append(line)
            self.seen += 1
            self.phase = phases.advance(self.phase, line)
            self.marks.see(line, round(self.last_output - self.started_at, 3))
            self._log.info(line)

    def lines(self, count: int | None = None) -> list[str]:
        with self._lock:
            items = list(self.tail)
        return items[-count:] if count else items

    def lines_after(self, seen: int) -> list[str]:
        """The lines kept that came after the first `seen` (what it said since ready, say)."""
        with self._lock:
            items, total = list(self.tail), self.seen
        return items[-(total - seen):] if total > seen else []

    def close(self, wait_s: float = 2.0) -> None:
        """Stop reading: wait briefly for EOF, then stop even if a stray process still
        holds the write end, and close our end."""
        self.closed.wait(wait_s)
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            os.close(self._fd)
        except OSError:
            pass
        with self._lock:
            self._handler.close()

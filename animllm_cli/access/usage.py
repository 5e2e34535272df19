"""The durable record of what each client used: one row per request (when, who, which
model, how it ended, tokens in and out, the time it waited for a switch), in SQLite from
the standard library, a private file (0600) of the state directory that survives a
restart. The gateway appends in batches from a thread (gateway/clients.py); `animllm
usage` sums it per client and model."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from animllm_cli.errors import UsageError
from animllm_cli.paths import private_file, state_dir

SCHEMA = """CREATE TABLE IF NOT EXISTS usage (
    at REAL NOT NULL, client TEXT NOT NULL, model TEXT NOT NULL, outcome TEXT NOT NULL,
    tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL, waited_s REAL NOT NULL);
CREATE INDEX IF NOT EXISTS usage_at ON usage (at)"""


def usage_file() -> Path:
    return state_dir() / "clients" / "usage.sqlite3"


@dataclass(frozen=True)
class UsageRow:
    at: float          # wall clock, when the request ended
    client: str
    model: str
    outcome: str       # ok, or what failed it (http_429, timeout, engine_error, ...)
    tokens_in: int
    tokens_out: int
    waited_s: float    # the switch it waited for (0 when its model was ready)


class UsageLog:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or usage_file()

    def _connect(self) -> sqlite3.Connection:
        private_file(self.path)  # 0600 before SQLite opens it (its journal takes the same mode)
        connection = sqlite3.connect(self.path, timeout=10)
        connection.executescript(SCHEMA)
        return connection

    def append(self, rows: list[UsageRow]) -> None:
        if not rows:
            return
        with contextlib.closing(self._connect()) as connection, connection:
            connection.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?)", [astuple(r) for r in rows])

    def summary(self, since: float | None = None) -> list[dict[str, Any]]:
        """Per client and model since `since` (wall clock; None: all): requests, errors,
        tokens in and out, seconds waited for switches."""
        if not self.path.exists():
            return []
        with contextlib.closing(self._connect()) as connection:
            rows = connection.execute(
                "SELECT client, model, COUNT(*), SUM(outcome != 'ok'), SUM(tokens_in), SUM(tokens_out), "
                "SUM(waited_s), MIN(at), MAX(at) FROM usage WHERE at >= ? GROUP BY client, model "
                "ORDER BY client, model", (since or 0.0,)).fetchall()
        keys = ("client", "model", "requests", "errors", "tokens_in", "tokens_out", "waited_s", "first", "last")
        return [dict(zip(keys, row)) for row in rows]


def parse_since(text: str, now: float | None = None) -> float:
    """`--since`: a span back from now (30m, 12h, 7d) or a date/time (2026-12-01, 2026-12-01T09:00)."""
    from datetime import datetime

    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in units:
        return now - float(text[:-1]) * units[text[-1]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"--since {text!r} is neither a span nor a date",
                         hint="give a span back from now (30m, 12h, 7d) or a date (2026-12-01, 2026-12-01T09:00)") from None

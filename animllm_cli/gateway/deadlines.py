"""The bounds on one request's waits (`limits` in the config), as deadlines:
- queue_timeout_s: waiting for a slot, a model load included;
- first_byte_timeout_s: from sending to the engine until its answer starts (for a
  non-streamed request that is the whole generation);
- idle_timeout_s: the longest gap between two chunks of a stream;
- total_timeout_s: the whole request from arrival, when set.
A bound that runs out is an Expired naming it, for the 504 or the error event.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable

if TYPE_CHECKING:
    from animllm_cli.config.schema import AnimllmConfig


@dataclass(frozen=True)
class Bounds:
    queue_s: float
    first_byte_s: float
    idle_s: float
    total_s: float | None

    @classmethod
    def from_config(cls, config: AnimllmConfig) -> "Bounds":
        limits = config.limits
        quiet = limits.request_timeout_s  # the seed's 300 s: no answer from the engine for this long
        return cls(queue_s=limits.queue_timeout_s or config.engine.start_timeout_s + quiet,
                   first_byte_s=limits.first_byte_timeout_s or quiet, idle_s=limits.idle_timeout_s or quiet,
                   total_s=limits.total_timeout_s)


class Expired(Exception):
    """A bound ran out; says which, for the 504 or the error event."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} ({seconds:g}s)")
        self.what, self.seconds = what, seconds


TOTAL_BOUND = "the whole request took longer than total_timeout_s"


@dataclass
class Deadlines:
    bounds: Bounds
    end: float | None  # the loop time by which the whole request must be done (total_timeout_s)

    @classmethod
    def from_arrival(cls, bounds: Bounds) -> "Deadlines":
        now = asyncio.get_running_loop().time()
        return cls(bounds, now + bounds.total_s if bounds.total_s else None)

    def overdue(self, now: float) -> Expired | None:
        """The total bound's Expired once its end has passed, else None."""
        if self.end is not None and now >= self.end:
            return Expired(TOTAL_BOUND, self.bounds.total_s or 0)
        return None

    def bound(self, seconds: float, what: str) -> tuple[float, float, str]:
        """A wait's bound: `seconds` from now, or the total's end if sooner, as (loop time it
        ends, its seconds, what it is) for Expired."""
        end = asyncio.get_running_loop().time() + seconds
        if self.end is not None and self.end < end:
            return self.end, self.bounds.total_s or 0, TOTAL_BOUND
        return end, seconds, what

    async def within(self, awaitable: Awaitable[Any], seconds: float, what: str) -> Any:
        """Await with `seconds` as the bound (or the total's end, if sooner): Expired names it."""
        end, seconds, what = self.bound(seconds, what)
        bound = asyncio.timeout_at(end)
        try:
            async with bound:
                return await awaitable
        except TimeoutError:
            if bound.expired():
                raise Expired(what, seconds) from None
            raise


class IdleWatch:
    """The bounds on a stream's reads (idle_timeout_s, and total_timeout_s's end) as one
    timer per stream that re-arms itself when it fires early, instead of a timeout context
    around every read: that context (a timer made and cancelled per chunk) cost the relay
    more CPU than the rest of its work (benchmarks/gateway_overhead.py, relay-cpu). Time
    spent sending to a slow client is not idleness of the upstream: only reads are bounded."""

    def __init__(self, deadlines: Deadlines, idle_s: float, what: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.deadlines, self.idle_s, self.what = deadlines, idle_s, what
        self.reading_since: float | None = None
        self.expired: Expired | None = None
        self._handle = self.loop.call_at(self._next(self.loop.time()), self._fire)

    def _next(self, now: float) -> float:
        if self.reading_since is None:  # sending: nothing is bounded until the next read
            return now + self.idle_s
        due = self.reading_since + self.idle_s
        return min(due, self.deadlines.end) if self.deadlines.end is not None else due

    def _fire(self) -> None:
        now = self.loop.time()
        if self.reading_since is not None:
            self.expired = self.deadlines.overdue(now)
            if self.expired is None and now - self.reading_since >= self.idle_s:
                self.expired = Expired(self.what, self.idle_s)
            if self.expired is not None:
                self.task.cancel()
                return
        self._handle = self.loop.call_at(max(self._next(now), now + 0.001), self._fire)

    def cancelled(self) -> None:
        """In the reader's `except CancelledError`: Expired if this watch cancelled it."""
        if self.expired is not None and self.task.uncancel() == 0:
            raise self.expired from None

    def close(self) -> None:
        self._handle.cancel()

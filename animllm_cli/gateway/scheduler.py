"""Who runs next, and when to switch models. Pure asyncio: no HTTP, no clock of its own
(tests pass one), no sleeps.

Rules:
- Waiting requests are ordered by priority (higher first), then arrival.
- A request for the loaded model runs when that model has a free slot (its profile's
  concurrency limit).
- A request for another model makes a switch pending. From then on, only requests for the
  loaded model that arrived before the oldest request waiting for another model still
  run, whatever their priority; later ones wait behind the switch. So a request waiting
  for a switch waits at most for what arrived before it and what is in flight: no
  stream of later requests, however high their priority, can starve it.
- A model with requests in flight is never evicted: the switch starts when the loaded
  model's in-flight count is zero.
- A failed switch fails every request waiting for that model, and the model gets a
  backoff window during which new requests for it fail at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable


class QueueFull(Exception):
    pass


class SwitchFailed(Exception):
    """Starting the model failed; carries the diagnosis for the 503."""

    def __init__(self, model: str, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.model, self.reason, self.retry_after_s = model, reason, retry_after_s


@dataclass(order=True)
class Ticket:
    sort_key: tuple[float, int]
    model: str = field(compare=False)
    granted: asyncio.Future = field(compare=False, repr=False)

    @property
    def priority(self) -> float:
        return -self.sort_key[0]

    @property
    def seq(self) -> int:
        return self.sort_key[1]


@dataclass
class Lease:
    model: str
    _scheduler: "Scheduler"
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._scheduler._release(self)


class Scheduler:
    def __init__(self, switch: Callable[[str], Awaitable[None]], limit: Callable[[str], int],
                 loaded: Callable[[], str | None], *, queue_max: int, backoff_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._switch = switch
        self._limit = limit
        self._loaded = loaded  # the engine manager's record of the ready model: the one truth
        self.queue_max = queue_max
        self.backoff_s = backoff_s
        self._clock = clock
        self._seq = itertools.count()
        self.waiting: list[Ticket] = []
        self.in_flight = 0
        self.switching_to: str | None = None
        self.backoff_until: dict[str, tuple[float, str]] = {}
        self._switch_task: asyncio.Task | None = None

    # --------------------------------------------------------------------- public
    @property
    def current(self) -> str | None:
        """The model whose engine is ready now (read from the engine manager, not kept here)."""
        return self._loaded()

    async def acquire(self, model: str, priority: float = 0) -> Lease:
        """Wait for a slot on `model`, loading it first if needed. Cancelling the caller
        (a client that went away) takes it out of the queue."""
        blocked = self.backoff_until.get(model)
        if blocked and blocked[0] > self._clock():
            raise SwitchFailed(model, blocked[1], blocked[0] - self._clock())
        if len(self.waiting) >= self.queue_max:
            raise QueueFull()
        ticket = Ticket((-priority, next(self._seq)), model, asyncio.get_running_loop().create_future())
        self.waiting.append(ticket)
        self._pump()
        try:
            await ticket.granted
        except BaseException:
            if ticket in self.waiting:
                self.waiting.remove(ticket)
            elif ticket.granted.done() and not ticket.granted.cancelled() and ticket.granted.exception() is None:
                self._release(Lease(model, self))  # granted just as the caller went away: give the slot back
            self._pump()
            raise
        return Lease(model, self)

    def try_acquire(self, model: str) -> Lease | None:
        """The fast path: the model is loaded, a slot is free and nobody waits. No await."""
        if (model == self.current and self.switching_to is None and not self.waiting
                and self.in_flight < self._limit(model)):
            self.in_flight += 1
            return Lease(model, self)
        return None

    def engine_lost(self) -> None:
        """The loaded engine died: the next request for it restarts it through a switch."""
        self._pump()

    @property
    def depth(self) -> int:
        return len(self.waiting)

    # --------------------------------------------------------------------- internals
    def _release(self, lease: Lease) -> None:
        self.in_flight -= 1
        self._pump()

    def _pump(self) -> None:
        if self.switching_to is not None:
            return
        self.waiting.sort()
        current = self.current
        foreign = [t for t in self.waiting if t.model != current]
        first_foreign = foreign[0] if foreign else None
        oldest_foreign = min((t.seq for t in foreign), default=None)
        for ticket in [t for t in self.waiting if t.model == current]:
            if self.in_flight >= self._limit(ticket.model):
                break
            if oldest_foreign is not None and ticket.seq > oldest_foreign:
                continue  # arrived after a request that waits for a switch: it waits too
            self._grant(ticket)
        if first_foreign is not None and self.in_flight == 0:
            self._start_switch(first_foreign.model)

    def _grant(self, ticket: Ticket) -> None:
        self.waiting.remove(ticket)
        if not ticket.granted.done():
            self.in_flight += 1
            ticket.granted.set_result(None)

    def _start_switch(self, model: str) -> None:
        self.switching_to = model
        self._switch_task = asyncio.get_running_loop().create_task(self._run_switch(model))

    async def _run_switch(self, model: str) -> None:
        try:
            await self._switch(model)
        except Exception as exc:  # the engine did not start: fail its waiters, back off
            reason = str(exc) or type(exc).__name__
            self.backoff_until[model] = (self._clock() + self.backoff_s, reason)
            for ticket in [t for t in self.waiting if t.model == model]:
                self.waiting.remove(ticket)
                if not ticket.granted.done():
                    ticket.granted.set_exception(SwitchFailed(model, reason, self.backoff_s))
        else:
            self.backoff_until.pop(model, None)
        finally:
            self.switching_to = None
            self._pump()

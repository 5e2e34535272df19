"""Who runs next, and when to switch models. Pure asyncio: no HTTP, no clock of its own
(tests pass one), no sleeps.

A switch costs 10-30 s on the studio box and a request a few: this is a polling system
with switch-over times, and the rule (policy "batch", the default) is the one that
literature calls time-limited exhaustive service. The loaded model keeps the card while
it has work, so one switch pays for a batch; the time limit keeps a waiting model from
being starved.

- Within a model: priority (higher first), then arrival.
- A request for the loaded model starts as soon as the model has a free slot (its
  concurrency limit), whatever waits for other models, unless a request for another
  model is *overdue* (it has waited `max_wait_s`). Then only the loaded model's requests
  that arrived before the oldest overdue one still start, plus the batch it switched in
  for (every request that was waiting for it when it became loaded). An urgent request
  (`animllm switch`) lets nothing more start.
- The switch starts when the loaded model has nothing running (a model with requests in
  flight is never evicted) and nothing it may still start.
- The next model: an urgent request's, else the oldest overdue request's; otherwise the
  model whose turn is best (the highest priority among its waiters, ties to the oldest
  arrival), unless another has at least `batch_factor` times as many requests waiting.
- A failed switch fails every request waiting for that model (and only those), and the
  model gets a backoff window during which new requests for it fail at once.

So a request waits at most `max_wait_s`, plus what the loaded model still has to finish
then (what runs, its batch, and its requests older than this one), plus the switch to its
model and, with three models or more, the switches to and batches of models whose
requests are older than its own.

Policy "fifo" is the strict arrival order of the first version, kept for comparison
(benchmarks/mixed_load.py): every request waiting for another model is overdue at once
and no batch is exempt, so interleaved clients cost one switch per request.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Literal

from animllm_cli.gateway.state import ModelQueue

Policy = Literal["batch", "fifo"]


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
    arrived: float = field(compare=False, default=0.0)
    urgent: bool = field(compare=False, default=False)   # `animllm switch`: overdue at once, and nothing more starts
    batched: bool = field(compare=False, default=False)  # waiting when its model became loaded

    @property
    def priority(self) -> float:
        return -self.sort_key[0]

    @property
    def seq(self) -> int:
        return self.sort_key[1]


@dataclass(frozen=True)
class Decision:
    """Why a switch happened and why to this model: the labels of the switch metric.

    reason: cold (nothing was loaded: the first load, or after an engine died) | idle (the
    loaded model had no work left, even if a request elsewhere had just become overdue) |
    max_wait (it still had work, but a request elsewhere waited max_wait_s) | admin
    (`animllm switch`) | arrival_order (policy fifo).
    chosen_by: only (one model waited) | oldest | priority | more_work | overdue | explicit
    (`animllm switch`, or the model `serve` starts with) | arrival_order.
    """

    model: str
    reason: str
    chosen_by: str


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
    def __init__(self, switch: Callable[[Decision], Awaitable[None]], limit: Callable[[str], int],
                 loaded: Callable[[], str | None], *, queue_max: int, backoff_s: float = 30.0,
                 policy: Policy = "batch", max_wait_s: float = 60.0, batch_factor: float = 4.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._switch = switch
        self._limit = limit
        self._loaded = loaded  # the engine manager's record of the ready model: the one truth
        self.queue_max = queue_max
        self.backoff_s = backoff_s
        self.policy, self.max_wait_s, self.batch_factor = policy, max_wait_s, batch_factor
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

    async def acquire(self, model: str, priority: float = 0, *, urgent: bool = False) -> Lease:
        """Wait for a slot on `model`, loading it first if needed. `urgent` (an explicit
        switch): nothing more starts on the loaded model, the switch waits only for what
        runs. Cancelling the caller (a client that went away) takes it out of the queue."""
        blocked = self.backoff_until.get(model)
        if blocked and blocked[0] > self._clock():
            raise SwitchFailed(model, blocked[1], blocked[0] - self._clock())
        if len(self.waiting) >= self.queue_max:
            raise QueueFull()
        ticket = Ticket((-priority, next(self._seq)), model, asyncio.get_running_loop().create_future(),
                        arrived=self._clock(), urgent=urgent)
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

    def queues(self) -> dict[str, ModelQueue]:
        """Per model: how many wait, and how long the oldest has waited."""
        now, by_model = self._clock(), self._by_model(self.waiting)
        return {model: ModelQueue(waiting=len(tickets),
                                  oldest_wait_s=round(now - min(t.arrived for t in tickets), 3))
                for model, tickets in by_model.items()}

    # --------------------------------------------------------------------- internals
    def _release(self, lease: Lease) -> None:
        self.in_flight -= 1
        self._pump()

    def _pump(self) -> None:
        """Start what may start; start a switch when the loaded model may give up the card.
        Called on every event (arrival, release, switch end): a wait only ends at one."""
        if self.switching_to is not None:
            return
        # A caller cancelled in this same turn of the loop is not waiting any more, even
        # before its own cleanup runs: it must not start a switch.
        self.waiting = sorted(t for t in self.waiting if not t.granted.done())
        current = self.current
        foreign = [t for t in self.waiting if t.model != current]
        overdue = self._overdue(foreign)
        gate = min((t.seq for t in overdue), default=None)
        explicit = any(t.urgent for t in foreign)  # `animllm switch` waits only for what runs
        for ticket in [t for t in self.waiting if t.model == current]:
            if self.in_flight >= self._limit(ticket.model) or explicit:
                break
            if gate is not None and ticket.seq > gate and not ticket.batched:
                continue  # arrived after a request that has waited long enough: it waits too
            self._grant(ticket)
        if foreign and self.in_flight == 0:
            self._start_switch(self._decide(current, foreign, overdue))

    def _overdue(self, foreign: list[Ticket]) -> list[Ticket]:
        if self.policy == "fifo":
            return foreign
        now = self._clock()
        return [t for t in foreign if t.urgent or now - t.arrived >= self.max_wait_s]

    def _decide(self, current: str | None, foreign: list[Ticket], overdue: list[Ticket]) -> Decision:
        model, chosen_by = self._next_model(foreign, overdue)
        if current is None:
            reason = "cold"
        elif any(t.urgent and t.model == model for t in foreign):
            reason = "admin"
        elif any(t.model == current for t in self.waiting):  # it still had work, held back by the gate
            reason = "arrival_order" if self.policy == "fifo" else "max_wait"
        else:
            reason = "idle"
        return Decision(model, reason, chosen_by)

    def _next_model(self, foreign: list[Ticket], overdue: list[Ticket]) -> tuple[str, str]:
        if self.policy == "fifo":  # the oldest, whatever its priority: the gate is by arrival too
            return min(foreign, key=lambda t: t.seq).model, "arrival_order"
        if overdue:
            first = min(overdue, key=lambda t: (not t.urgent, t.seq))
            return first.model, "explicit" if first.urgent else "overdue"
        by_model = self._by_model(foreign)
        if len(by_model) == 1:
            return next(iter(by_model)), "only"

        def turn(model: str) -> tuple[float, int]:
            return -max(t.priority for t in by_model[model]), min(t.seq for t in by_model[model])

        best = min(by_model, key=turn)
        busiest = max(by_model, key=lambda m: (len(by_model[m]), -turn(m)[1]))
        if busiest != best and len(by_model[busiest]) >= self.batch_factor * len(by_model[best]):
            return busiest, "more_work"
        oldest = min(foreign, key=lambda t: t.seq).model
        return best, "oldest" if best == oldest else "priority"

    @staticmethod
    def _by_model(tickets: list[Ticket]) -> dict[str, list[Ticket]]:
        grouped: dict[str, list[Ticket]] = defaultdict(list)
        for ticket in tickets:
            grouped[ticket.model].append(ticket)
        return grouped

    def _grant(self, ticket: Ticket) -> None:
        self.waiting.remove(ticket)
        if not ticket.granted.done():
            self.in_flight += 1
            ticket.granted.set_result(None)

    def _start_switch(self, decision: Decision) -> None:
        self.switching_to = decision.model
        self._switch_task = asyncio.get_running_loop().create_task(self._run_switch(decision))

    async def _run_switch(self, decision: Decision) -> None:
        model = decision.model
        try:
            await self._switch(decision)
        except Exception as exc:  # the engine did not start: fail its waiters, back off
            reason = str(exc) or type(exc).__name__
            self.backoff_until[model] = (self._clock() + self.backoff_s, reason)
            for ticket in [t for t in self.waiting if t.model == model]:
                self.waiting.remove(ticket)
                if not ticket.granted.done():
                    ticket.granted.set_exception(SwitchFailed(model, reason, self.backoff_s))
        else:
            self.backoff_until.pop(model, None)
            if self.policy == "batch":  # what it was loaded for runs, whoever becomes overdue meanwhile
                for ticket in self.waiting:
                    ticket.batched = ticket.batched or ticket.model == model
        finally:
            self.switching_to = None
            self._pump()

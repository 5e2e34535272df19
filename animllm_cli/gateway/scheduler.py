"""Who runs next, and when to load or evict models. Pure asyncio: no HTTP, no clock of its
own (tests pass one), no sleeps.

The engine pool (gateway/pool.py) keeps every model that fits loaded: a request for a
resident model starts as soon as that model has a free slot (its concurrency limit),
whatever the pool is doing meanwhile. A request for a model that is not resident needs a
*switch*: load it beside the residents when the pool has room (`place`), else evict
residents, idle ones least recently used first, pinned ones never, until it has.

A switch costs 10-30 s on the studio box and a request a few: when a switch must evict
a model that still has work, this is a polling system with switch-over times, and the rule
(policy "batch", the default) is the one that literature calls time-limited exhaustive
service. The model to evict keeps the card while it has work, so one switch pays for a
batch; the time limit keeps a waiting model from being starved.

- Within a model: priority (higher first); within a priority, the clients waiting for it
  take its slots in turn, by weight (start-time fair queuing: each request is tagged with
  its client's next turn, the later of the model's virtual time, the tag of the last request
  granted, and the client's last tag, plus 1/weight), so one client's thousand requests do
  not make another's one wait behind all of them; one client's own requests go by arrival.
  A client's `concurrency` caps its requests running on all models at once, and its
  `queue_share` the requests it may have waiting (gateway/clients.py).
- A request for a resident model starts as soon as the model has a free slot, unless the
  model is to be evicted for the next switch and a request for another model is
  *overdue* (it has waited `max_wait_s`). Then only its requests that arrived before the
  oldest overdue one still start, plus the batch it was loaded for (every request that
  was waiting for it when it became loaded). An urgent request (`animllm switch`) lets
  nothing more start on the models it evicts.
- The switch starts when the models it evicts have nothing running (a model with
  requests in flight is never evicted) and nothing they may still start. One switch runs
  at a time; the residents it leaves alone serve throughout.
- The next model: an urgent request's, else the oldest overdue request's; otherwise the
  model whose turn is best (the highest priority among its waiters, ties to the oldest
  arrival), unless another has at least `batch_factor` times as many requests waiting.
- A failed switch fails every request waiting for that model (and only those), and the
  model gets a backoff window during which new requests for it fail at once.

So a request waits at most `max_wait_s`, plus what the evicted model still has to finish
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
from typing import Awaitable, Callable, Collection, Literal

from animllm_cli.wire import ChosenBy, ModelQueue, SwitchReason

Policy = Literal["batch", "fifo"]


class QueueFull(Exception):
    """The queue is full, or (`client`) the client's share of it."""

    def __init__(self, client: str | None = None, limit: int | None = None) -> None:
        super().__init__(client or "")
        self.client, self.limit = client, limit


@dataclass(frozen=True)
class Claimant:
    """Who a request is for, as the scheduler sees it: a client's name, its weight against
    the other clients waiting for a model, and its caps (None: none)."""
    name: str = ""
    weight: float = 1.0
    concurrency: int | None = None
    queue_limit: int | None = None


ANYONE = Claimant()


class SwitchFailed(Exception):
    """Starting the model failed; carries the diagnosis for the 503."""

    def __init__(self, model: str, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.model, self.reason, self.retry_after_s = model, reason, retry_after_s


@dataclass(order=True)
class Ticket:
    sort_key: tuple[float, float, int]   # -priority, the client's fair turn, arrival
    model: str = field(compare=False)
    granted: asyncio.Future = field(compare=False, repr=False)
    arrived: float = field(compare=False, default=0.0)
    urgent: bool = field(compare=False, default=False)   # `animllm switch`: overdue at once, and nothing more starts
    batched: bool = field(compare=False, default=False)  # waiting when its model became loaded
    claimant: Claimant = field(compare=False, default=ANYONE)

    @property
    def priority(self) -> float:
        return -self.sort_key[0]

    @property
    def tag(self) -> float:
        return self.sort_key[1]

    @property
    def seq(self) -> int:
        return self.sort_key[2]


@dataclass(frozen=True)
class Decision:
    """Why a switch happened and why to this model: the labels of the switch metric.

    reason: restart (its engine died since it last ran) | cold (nothing was loaded) | beside
    (loaded next to the residents, nothing evicted) | idle (the evicted models had no work
    left, even if a request elsewhere had just become overdue) | max_wait (they still had
    work, but a request elsewhere waited max_wait_s) | admin (`animllm switch`) |
    arrival_order (policy fifo) | keep_alive, unload (no model loaded: one evicted because
    it stayed idle for its keep_alive, or by `animllm unload`; sleep: by `animllm unload
    --sleep`, which sends it to sleep where it can).
    chosen_by: only (one model waited) | oldest | priority | more_work | overdue | explicit
    (`animllm switch`, `unload`, preload, or the model `serve` starts with) | arrival_order
    | idle (keep_alive).
    `evict`: the residents it stops first, least recently used first (not a label).
    `explicit`: an explicit load of the model waits for it (`animllm switch`, a preload, the
    model `serve` starts with), whose command pulled the model first: the pool pulls only
    for requests (not a label).
    """

    model: str | None
    reason: SwitchReason
    chosen_by: ChosenBy
    evict: tuple[str, ...] = field(default=(), compare=False)
    explicit: bool = field(default=False, compare=False)


@dataclass
class Lease:
    model: str
    _scheduler: "Scheduler"
    client: str = ""
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._scheduler._release(self)


class Scheduler:
    def __init__(self, switch: Callable[[Decision], Awaitable[None]], limit: Callable[[str], int],
                 residents: Callable[[], Collection[str]], *, queue_max: int, backoff_s: float = 30.0,
                 remote: Collection[str] = frozenset(),
                 place: Callable[[str, frozenset[str]], bool] | None = None,
                 pinned: Callable[[str], bool] = lambda model: False,
                 asleep: Callable[[], Collection[str]] = lambda: (),
                 restarting: Callable[[], Collection[str]] = lambda: (),
                 policy: Policy = "batch", max_wait_s: float = 60.0, batch_factor: float = 4.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._switch = switch
        self._limit = limit
        self._residents = residents  # the pool's record of the ready engines: the one truth
        # Models served elsewhere: always ready, never loaded or evicted; priority and the
        # concurrency limit apply to them as to the residents.
        self.remote = frozenset(remote)
        # Whether `model` fits once the residents in the set are gone; without a pool, one at a time.
        self._place = place or (lambda model, evicting: not set(self._residents()) - evicting)
        self._pinned = pinned
        self._asleep = asleep  # the pool's sleepers: a request for one wakes it; an unload stops it
        self._restarting = restarting  # the models whose engine died: loading one is a restart
        self.queue_max = queue_max
        self.backoff_s = backoff_s
        self.policy, self.max_wait_s, self.batch_factor = policy, max_wait_s, batch_factor
        self._clock = clock
        self._seq = itertools.count()
        self.waiting: list[Ticket] = []
        self.running: dict[str, int] = defaultdict(int)   # model -> requests in flight
        self.client_running: dict[str, int] = defaultdict(int)  # client -> requests in flight, all models
        self._virtual: dict[str, float] = defaultdict(float)    # model -> the fair tag last granted
        self._last_tag: dict[tuple[str, str], float] = {}       # (model, client) -> its newest tag
        self.last_used: dict[str, float] = {}             # model -> when a request last started or ended
        self.operation: Decision | None = None            # the switch (or unload) in progress
        self.backoff_until: dict[str, tuple[float, str]] = {}
        self._unloads: dict[str, tuple[Decision, asyncio.Future]] = {}  # asked for, waiting for the model to drain
        self.draining: set[str] = set()   # residents that start nothing new: to be unloaded or evicted
        self._switch_task: asyncio.Task | None = None

    # --------------------------------------------------------------------- public
    @property
    def current(self) -> str | None:
        """The one resident model, if exactly one is resident (the single-slot view)."""
        residents = list(self._residents())
        return residents[0] if len(residents) == 1 else None

    @property
    def switching_to(self) -> str | None:
        return self.operation.model if self.operation else None

    @property
    def in_flight(self) -> int:
        return sum(self.running.values())

    async def acquire(self, model: str, priority: float = 0, *, urgent: bool = False,
                      claimant: Claimant = ANYONE) -> Lease:
        """Wait for a slot on `model`, loading it first if needed. `urgent` (an explicit
        switch): nothing more starts on the models it evicts, the switch waits only for
        what runs. Cancelling the caller (a client that went away) takes it out of the queue."""
        self.check(model, claimant)
        self._keep(model)
        ticket = Ticket((-priority, self._fair_tag(model, claimant), next(self._seq)), model,
                        asyncio.get_running_loop().create_future(), arrived=self._clock(), urgent=urgent,
                        claimant=claimant)
        try:
            self.waiting.append(ticket)
            self._pump()
            await ticket.granted
        except BaseException:
            granted = ticket.granted.done() and not ticket.granted.cancelled() and ticket.granted.exception() is None
            if ticket in self.waiting:
                self.waiting.remove(ticket)
            if granted:
                self._release(Lease(model, self, claimant.name))  # granted just as the caller went away
            else:  # (a pump may have dropped it from the queue already, its future cancelled)
                self._untag(ticket)
            self._pump()
            raise
        return Lease(model, self, claimant.name)

    def check(self, model: str, claimant: Claimant = ANYONE) -> None:
        """Raise what a wait for `model` would fail with at once: its backoff, a full queue,
        the client's full share of it."""
        blocked = self.backoff_until.get(model)
        if blocked and blocked[0] > self._clock():
            raise SwitchFailed(model, blocked[1], blocked[0] - self._clock())
        if len(self.waiting) >= self.queue_max:
            raise QueueFull()
        limit = claimant.queue_limit
        if limit is not None and sum(1 for t in self.waiting if t.claimant.name == claimant.name) >= limit:
            raise QueueFull(claimant.name, limit)

    def try_acquire(self, model: str, claimant: Claimant = ANYONE) -> Lease | None:
        """The fast path: the model is resident, a slot is free and nobody waits. No await."""
        self._keep(model)
        # A remote model waits only behind its own requests: nothing else can hold it up.
        ahead = any(t.model == model for t in self.waiting) if model in self.remote else self.waiting
        if (not ahead and model not in self._unloads and model not in self._evicting()
                and self._serves(model) and self.running[model] < self._limit(model)
                and self._under_cap(claimant)):
            self._start(model, claimant.name)
            return Lease(model, self, claimant.name)
        return None

    def _fair_tag(self, model: str, claimant: Claimant) -> float:
        """The client's next turn on `model` (start-time fair queuing)."""
        key = (model, claimant.name)
        tag = max(self._virtual[model], self._last_tag.get(key, 0.0)) + 1.0 / claimant.weight
        self._last_tag[key] = tag
        return tag

    def _untag(self, ticket: Ticket) -> None:
        """A request that leaves without a slot (gone, timed out, failed) gives its turn back:
        its client's next turn follows the ones it still has waiting."""
        key = (ticket.model, ticket.claimant.name)
        left = [t.tag for t in self.waiting if t.model == ticket.model and t.claimant.name == key[1]]
        self._last_tag[key] = max(left, default=self._virtual[ticket.model])

    def _under_cap(self, claimant: Claimant) -> bool:
        return claimant.concurrency is None or self.client_running[claimant.name] < claimant.concurrency

    def clients(self) -> dict[str, tuple[int, int]]:
        """Per client: requests waiting, requests running (those with either)."""
        waiting: dict[str, int] = defaultdict(int)
        for ticket in self.waiting:
            waiting[ticket.claimant.name] += 1
        names = set(waiting) | {c for c, n in self.client_running.items() if n}
        return {name: (waiting[name], self.client_running[name]) for name in sorted(names)}

    async def unload(self, model: str, reason: SwitchReason = "unload") -> None:
        """Evict `model` once what runs on it has finished; nothing new starts on it
        meanwhile (requests that wait for it load it again afterwards)."""
        done = self.request_unload(model, reason)
        if done is not None:
            await asyncio.shield(done)

    def request_unload(self, model: str, reason: SwitchReason) -> asyncio.Future | None:
        """`unload` without waiting (keep-alive); asking twice is asking once. None: not
        resident (neither loaded nor asleep)."""
        if model not in self._residents() and model not in self._asleep():
            return None
        if model not in self._unloads:
            chosen_by = "idle" if reason == "keep_alive" else "explicit"
            self._unloads[model] = (Decision(None, reason, chosen_by, (model,)),
                                    asyncio.get_running_loop().create_future())
            self._pump()
        return self._unloads[model][1] if model in self._unloads else None

    def touch(self, model: str) -> None:
        """A client asked for the resident `model` to stay loaded (Ollama's load ping): idle
        from now, and a keep-alive unload not begun yet is called off."""
        self._keep(model)
        self.last_used[model] = self._clock()

    def _keep(self, model: str) -> None:
        """A request for a model whose keep-alive unload has not started yet keeps it loaded."""
        pending = self._unloads.get(model)
        if pending and pending[0].reason == "keep_alive" and model not in self._evicting():
            del self._unloads[model]
            pending[1].set_result(None)

    def _evicting(self) -> tuple[str, ...]:
        """The residents the switch in progress stops (the pool marks them a moment later)."""
        return self.operation.evict if self.operation else ()

    def idle(self, model: str) -> bool:
        """Nothing runs on `model` and nothing waits for it."""
        return not self.running[model] and not any(t.model == model for t in self.waiting)

    def idle_for(self, model: str) -> float | None:
        """How long `model` has had nothing running and nothing waiting; None while it has."""
        if not self.idle(model) or model not in self.last_used:
            return None
        return max(0.0, self._clock() - self.last_used[model])

    def engine_lost(self) -> None:
        """A resident engine died: the next request for it restarts it through a switch."""
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

    def waiting_for(self, model: str) -> str:
        """What a request for `model` waits for now, in words (the loading comments)."""
        operation = self.operation
        if operation is not None and operation.model == model:
            evicting = f", evicting {', '.join(operation.evict)}" if operation.evict else ""
            return f"{self._loading(model)} {model}{evicting}"
        if model in self.draining:
            return f"waiting for {model}: it is draining (to be unloaded or evicted), then it loads again"
        if self._serves(model):
            return f"waiting for a free slot on {model}"
        if operation is not None:
            return f"waiting for {model}: {operation.model or ', '.join(operation.evict)} is being " \
                   f"{'loaded' if operation.model else 'unloaded'} first"
        return f"waiting for {model}: its turn to be {'woken' if model in self._asleep() else 'loaded'}"

    # --------------------------------------------------------------------- internals
    def _loading(self, model: str) -> str:
        """What a switch to `model` does, in a word."""
        return "waking" if model in self._asleep() else "restarting" if model in self._restarting() else "loading"

    def _serves(self, model: str) -> bool:
        """Requests for `model` start without a switch: it is resident, or served elsewhere."""
        return model in self.remote or model in self._residents()

    def _start(self, model: str, client: str = "") -> None:
        self.running[model] += 1
        self.client_running[client] += 1
        self.last_used[model] = self._clock()

    def _release(self, lease: Lease) -> None:
        self.running[lease.model] -= 1
        self.client_running[lease.client] -= 1
        self.last_used[lease.model] = self._clock()
        self._pump()

    def _pump(self) -> None:
        """Start what may start; start a switch when the models it evicts may give up
        the card. Called on every event (arrival, release, switch end): a wait only ends at one."""
        # A caller cancelled in this same turn of the loop is not waiting any more, even
        # before its own cleanup runs: it must not start a switch.
        self.waiting = sorted(t for t in self.waiting if not t.granted.done())
        residents = set(self._residents())
        loading = self.switching_to
        foreign = [t for t in self.waiting if t.model not in residents and t.model not in self.remote
                   and t.model != loading]
        overdue = self._overdue(foreign)
        decision = self._decide(residents, foreign, overdue) if foreign and self.operation is None else None
        evicting = set(decision.evict) if decision else set()
        gate = min((t.seq for t in overdue), default=None)
        explicit = any(t.urgent for t in foreign)  # `animllm switch` waits only for what runs
        gone = set(self._unloads) | set(self._evicting())
        self.draining = gone | (evicting if explicit or gate is not None else set())
        for ticket in list(self.waiting):
            model = ticket.model
            if (model not in residents and model not in self.remote) or model in gone \
                    or self.running[model] >= self._limit(model) or not self._under_cap(ticket.claimant):
                continue
            if model in evicting and (explicit or (gate is not None and ticket.seq > gate and not ticket.batched)):
                continue  # to be evicted, and this one arrived after a request that has waited long enough
            self._grant(ticket)
        if self.operation is None:
            drained = next((m for m in self._unloads if not self.running[m]), None)
            if drained is not None:
                self._start_operation(self._unloads[drained][0])
            elif decision is not None and not any(self.running[m] for m in decision.evict):
                self._start_operation(decision)

    def _overdue(self, foreign: list[Ticket]) -> list[Ticket]:
        if self.policy == "fifo":
            return foreign
        now = self._clock()
        return [t for t in foreign if t.urgent or now - t.arrived >= self.max_wait_s]

    def _decide(self, residents: set[str], foreign: list[Ticket], overdue: list[Ticket]) -> Decision | None:
        model, chosen_by = self._next_model(foreign, overdue)
        evict = self._victims(model, residents)
        if evict is None:
            self._fail(model, f"'{model}' does not fit beside the pinned models "
                              f"({', '.join(sorted(m for m in residents if self._pinned(m)))}) and nothing else "
                              f"can be evicted; see `animllm plan --together`", backoff=False)
            return None
        explicit = any(t.urgent and t.model == model for t in foreign)
        if model in self._restarting():
            reason = "restart"
        elif not residents:
            reason = "cold"
        elif explicit:
            reason = "admin"
        elif not evict:
            reason = "beside"
        elif any(t.model in evict for t in self.waiting):  # they still had work, held back by the gate
            reason = "arrival_order" if self.policy == "fifo" else "max_wait"
        else:
            reason = "idle"
        return Decision(model, reason, chosen_by, tuple(evict), explicit)

    def _victims(self, model: str, residents: set[str]) -> list[str] | None:
        """The residents to evict so that `model` fits: none if it fits beside them; else
        idle ones least recently used first, then busy ones (whose work must end first);
        never a pinned one. None: it cannot fit even then."""
        victims: list[str] = []
        candidates = sorted((m for m in residents if not self._pinned(m)),
                            key=lambda m: (not self.idle(m), self.last_used.get(m, 0.0)))
        for candidate in [None, *candidates]:
            if candidate is not None:
                victims.append(candidate)
            if self._place(model, frozenset(victims)):
                # Keep only those it needs: on another GPU, or smaller than a later one, an
                # earlier victim may free nothing that counts.
                for needless in [v for v in reversed(victims[:-1])]:
                    if self._place(model, frozenset(victims) - {needless}):
                        victims.remove(needless)
                return victims
        return None

    def _next_model(self, foreign: list[Ticket], overdue: list[Ticket]) -> tuple[str, ChosenBy]:
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
            self._start(ticket.model, ticket.claimant.name)
            self._virtual[ticket.model] = max(self._virtual[ticket.model], ticket.tag)
            ticket.granted.set_result(None)

    def _fail(self, model: str, reason: str, *, backoff: bool) -> None:
        """Fail every request waiting for `model` (and only those)."""
        if backoff:
            self.backoff_until[model] = (self._clock() + self.backoff_s, reason)
        for ticket in [t for t in self.waiting if t.model == model]:
            self.waiting.remove(ticket)
            self._untag(ticket)
            if not ticket.granted.done():
                ticket.granted.set_exception(SwitchFailed(model, reason, self.backoff_s if backoff else 0))

    def _start_operation(self, decision: Decision) -> None:
        self.operation = decision
        self._switch_task = asyncio.get_running_loop().create_task(self._run_operation(decision))

    async def _run_operation(self, decision: Decision) -> None:
        model = decision.model
        try:
            await self._switch(decision)
        except Exception as exc:  # the engine did not start: fail its waiters, back off
            if model is not None:
                self._fail(model, str(exc) or type(exc).__name__, backoff=True)
        else:
            if model is not None:
                self.backoff_until.pop(model, None)
                self.last_used[model] = self._clock()  # idle from here, for keep_alive
            if model is not None and self.policy == "batch":  # what it was loaded for runs, whoever becomes overdue meanwhile
                for ticket in self.waiting:
                    ticket.batched = ticket.batched or ticket.model == model
        finally:
            for evicted in decision.evict:
                unload = self._unloads.pop(evicted, None)
                if unload and not unload[1].done():
                    unload[1].set_result(None)
            self.operation = None
            self._pump()

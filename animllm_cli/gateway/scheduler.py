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
  requests in flight is never evicted) and nothing they may still start. The residents it
  leaves alone serve throughout.
- Switches run at once where they cannot meet: the next switch starts while others run
  when placement puts its model on GPUs none of them loads onto, it evicts none of their
  victims, and neither evicts the other's model (`_overlaps`). Otherwise it waits for them,
  as every switch did for the one before it: on one card, one switch at a time. An unload
  runs alone: once its model has drained, no switch starts until it has run (switches
  that keep starting beside each other must not starve it). Only the next model (by the
  rules below) may start beside a running switch: none overtakes it, and one that does not
  fit while a switch runs waits for it rather than fail (the switch may be what holds the
  room).
- The next model: an urgent request's, else the oldest overdue request's; otherwise the
  model whose turn is best (the highest priority among its waiters, ties to the oldest
  arrival), unless another has at least `batch_factor` times as many requests waiting.
- A failed switch fails every request waiting for that model (and only those, whatever
  runs beside it), and the model gets a backoff window during which new requests for it
  fail at once.

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
from typing import Awaitable, Callable, Collection, Literal, Mapping

from animllm_cli.wire import ChosenBy, ModelQueue, SwitchReason

Policy = Literal["batch", "fifo"]
# Where `model` goes once the residents named are gone, with the switches in progress
# (model -> GPUs) loading meanwhile; None: it does not fit.
Place = Callable[[str, frozenset[str], Mapping[str, tuple[int, ...]]], tuple[int, ...] | None]


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
    `gpus`: where placement put the model when it was decided (empty: an unload, which
    places nothing); what the overlap rule compares (not a label).
    """

    model: str | None
    reason: SwitchReason
    chosen_by: ChosenBy
    evict: tuple[str, ...] = field(default=(), compare=False)
    explicit: bool = field(default=False, compare=False)
    gpus: tuple[int, ...] = field(default=(), compare=False)


def _overlaps(one: Decision, other: Decision) -> bool:
    """Whether two switches must run one after the other: either is an unload (it runs
    alone) or places nothing known, they load onto a GPU in common, they share a victim, or
    one evicts the model the other loads."""
    if one.model is None or other.model is None or not one.gpus or not other.gpus:
        return True
    return bool(set(one.gpus) & set(other.gpus) or set(one.evict) & set(other.evict)
                or one.model in other.evict or other.model in one.evict)


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
                 place: Place | None = None,
                 pinned: Callable[[str], bool] = lambda model: False,
                 asleep: Callable[[], Collection[str]] = lambda: (),
                 restarting: Callable[[], Collection[str]] = lambda: (),
                 claim: Callable[[Decision], None] = lambda decision: None,
                 policy: Policy = "batch", max_wait_s: float = 60.0, batch_factor: float = 4.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._switch = switch
        self._limit = limit
        self._residents = residents  # the pool's record of the ready engines: the one truth
        # Models served elsewhere: always ready, never loaded or evicted; priority and the
        # concurrency limit apply to them as to the residents.
        self.remote = frozenset(remote)
        # Without a pool, one card that holds one model.
        self._place = place or (lambda model, evicting, loading: None if set(self._residents()) - evicting or loading
                                else (0,))
        self._pinned = pinned
        self._asleep = asleep  # the pool's sleepers: a request for one wakes it; an unload stops it
        self._restarting = restarting  # the models whose engine died: loading one is a restart
        # Told of each operation as it begins, before any other decision: the pool's record of
        # the switches under way (its placement and sleep decisions read it) never lags this one.
        self._claim = claim
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
        self._operations: tuple[Decision, ...] = ()       # the switches (or the unload) in progress, oldest first
        self.backoff_until: dict[str, tuple[float, str]] = {}
        self._unloads: dict[str, tuple[Decision, asyncio.Future]] = {}  # asked for, waiting for the model to drain
        self.draining: set[str] = set()   # residents that start nothing new: to be unloaded or evicted
        self._operation_tasks: set[asyncio.Task] = set()  # held: the loop keeps only weak references

    # --------------------------------------------------------------------- public
    @property
    def current(self) -> str | None:
        """The one resident model, if exactly one is resident (the single-slot view)."""
        residents = list(self._residents())
        return residents[0] if len(residents) == 1 else None

    @property
    def operation(self) -> Decision | None:
        """The oldest switch or unload in progress; None while the pool does none."""
        return self._operations[0] if self._operations else None

    @property
    def switching(self) -> list[str]:
        """The models the switches in progress load, oldest first."""
        return [operation.model for operation in self._operations if operation.model]

    @property
    def switching_to(self) -> str | None:
        """The model the oldest switch in progress loads (the single-slot view)."""
        return next(iter(self.switching), None)

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
        """The residents the switches in progress stop (the pool marks them a moment later)."""
        return tuple(victim for operation in self._operations for victim in operation.evict)

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
        operation = next((o for o in self._operations if o.model == model), None)
        if operation is not None:
            evicting = f", evicting {', '.join(operation.evict)}" if operation.evict else ""
            return f"{self._loading(model)} {model}{evicting}"
        if model in self.draining:
            return f"waiting for {model}: it is draining (to be unloaded or evicted), then it loads again"
        if self._serves(model):
            return f"waiting for a free slot on {model}"
        if self._operations:
            return f"waiting for {model}: {self._in_progress()} first"
        return f"waiting for {model}: its turn to be {'woken' if model in self._asleep() else 'loaded'}"

    def _in_progress(self) -> str:
        """What the pool does now, in words: the models being loaded, or the one being unloaded."""
        loads = self.switching
        if not loads:
            return f"{', '.join(self._operations[0].evict)} is being unloaded"
        return f"{' and '.join(loads)} {'is' if len(loads) == 1 else 'are'} being loaded"

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
        loading = set(self.switching)
        foreign = [t for t in self.waiting if t.model not in residents and t.model not in self.remote
                   and t.model not in loading]
        overdue = self._overdue(foreign)
        decision = self._decide(residents, foreign, overdue) if foreign else None
        if decision is not None and any(_overlaps(decision, running) for running in self._operations):
            decision = None  # it waits for the switch it meets, and holds nothing back meanwhile
        drained = next((m for m in self._unloads if not self.running[m]), None)
        if drained is not None and self._operations:
            decision = None  # an unload runs alone: nothing more starts beside the switches it waits for
        evicting = set(decision.evict) if decision else set()
        gate = min((t.seq for t in overdue), default=None)
        explicit = any(t.urgent for t in foreign)  # `animllm switch` waits only for what runs
        gone = set(self._unloads) | set(self._evicting())
        self.draining = gone | (evicting if explicit or gate is not None else set())
        for ticket in list(self.waiting):
            model = ticket.model
            # A model whose switch is still under way (ready, its switch not recorded yet) starts
            # nothing until the switch ends: its waiters, `animllm switch` among them, read its report.
            if (model not in residents and model not in self.remote) or model in gone or model in loading \
                    or self.running[model] >= self._limit(model) or not self._under_cap(ticket.claimant):
                continue
            if model in evicting and (explicit or (gate is not None and ticket.seq > gate and not ticket.batched)):
                continue  # to be evicted, and this one arrived after a request that has waited long enough
            self._grant(ticket)
        if not self._operations and drained is not None:
            self._start_operation(self._unloads[drained][0])
            return
        if decision is not None and not any(self.running[m] for m in decision.evict):
            self._start_operation(decision)
            self._pump()  # the model next in turn may load beside it

    def _overdue(self, foreign: list[Ticket]) -> list[Ticket]:
        if self.policy == "fifo":
            return foreign
        now = self._clock()
        return [t for t in foreign if t.urgent or now - t.arrived >= self.max_wait_s]

    def _decide(self, residents: set[str], foreign: list[Ticket], overdue: list[Ticket]) -> Decision | None:
        model, chosen_by = self._next_model(foreign, overdue)
        placed = self._victims(model, residents)
        if placed is None:
            if self._operations:  # a switch in progress may hold the room (a model starting, a GPU it loads onto)
                return None
            self._fail(model, f"'{model}' does not fit beside the pinned models "
                              f"({', '.join(sorted(m for m in residents if self._pinned(m)))}) and nothing else "
                              f"can be evicted; see `animllm plan --together`", backoff=False)
            return None
        evict, gpus = placed
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
        return Decision(model, reason, chosen_by, tuple(evict), explicit, gpus)

    def _victims(self, model: str, residents: set[str]) -> tuple[list[str], tuple[int, ...]] | None:
        """The residents to evict so that `model` fits, and the GPUs it then goes on: no
        victim if it fits beside them; else idle ones least recently used first, then busy
        ones (whose work must end first); never a pinned one. None: it cannot fit even then."""
        loading = {operation.model: operation.gpus for operation in self._operations if operation.model}

        def fits(evicting: frozenset[str]) -> tuple[int, ...] | None:
            return self._place(model, evicting, loading)

        victims: list[str] = []
        candidates = sorted((m for m in residents if not self._pinned(m)),
                            key=lambda m: (not self.idle(m), self.last_used.get(m, 0.0)))
        for candidate in [None, *candidates]:
            if candidate is not None:
                victims.append(candidate)
            if fits(frozenset(victims)):
                # Keep only those it needs: on another GPU, or smaller than a later one, an
                # earlier victim may free nothing that counts.
                for needless in [v for v in reversed(victims[:-1])]:
                    if fits(frozenset(victims) - {needless}):
                        victims.remove(needless)
                return victims, fits(frozenset(victims))
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
        """The one place an operation begins (`_run_operation`'s end, the one place it ends)."""
        self._operations = (*self._operations, decision)
        self._claim(decision)
        task = asyncio.get_running_loop().create_task(self._run_operation(decision))
        self._operation_tasks.add(task)
        task.add_done_callback(self._operation_tasks.discard)

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
            self._operations = tuple(o for o in self._operations if o is not decision)
            self._pump()

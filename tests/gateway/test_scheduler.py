"""The scheduler alone: no HTTP, no sleeps, an injected clock. A fake switch that the test
completes by hand."""

from __future__ import annotations

import asyncio

import pytest

from animllm_cli.gateway.scheduler import Decision, QueueFull, Scheduler, SwitchFailed


class Switcher:
    """A pool whose switches each stay pending until the test finishes or fails them."""

    def __init__(self) -> None:
        self.calls: list[str | None] = []
        self.decisions: list[Decision] = []
        self.pending: asyncio.Future | None = None
        self.residents: set[str] = set()  # the pool's record, which the scheduler reads

    @property
    def loaded(self) -> str | None:
        return next(iter(self.residents)) if len(self.residents) == 1 else None

    @loaded.setter
    def loaded(self, model: str | None) -> None:
        self.residents = {model} if model else set()

    async def __call__(self, decision: Decision) -> None:
        self.decisions.append(decision)
        self.calls.append(decision.model)
        self.residents -= set(decision.evict)  # stopped first, as the pool does
        self.pending = asyncio.get_running_loop().create_future()
        await self.pending

    def finish(self) -> None:
        if self.decisions[-1].model:
            self.residents.add(self.decisions[-1].model)
        self.pending.set_result(None)

    def fail(self, reason: str) -> None:
        self.pending.set_exception(RuntimeError(reason))


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(limit: int = 1, queue_max: int = 100, clock=None, **rule) -> tuple[Scheduler, Switcher]:
    """`rule`: policy, max_wait_s, batch_factor, and the pool's place and pinned."""
    switcher = Switcher()
    return Scheduler(switcher, lambda model: limit, lambda: switcher.residents, queue_max=queue_max, backoff_s=30,
                     clock=clock or Clock(), **rule), switcher


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def finish_next_switch(switcher: Switcher) -> None:
    """Let the loop run until a switch is pending, then complete it."""
    for _ in range(200):
        if switcher.pending is not None and not switcher.pending.done():
            break
        await asyncio.sleep(0)
    switcher.finish()
    await settle()


async def loaded(scheduler: Scheduler, switcher: Switcher, model: str = "a"):
    """Load `model` through a first request and return that request's finished task."""
    task = asyncio.create_task(scheduler.acquire(model))
    await settle()
    switcher.finish()
    await settle()
    return task


def run(coro):
    return asyncio.run(coro)


def test_first_request_loads_its_model() -> None:
    async def scenario():
        scheduler, switcher = make()
        task = asyncio.create_task(scheduler.acquire("a"))
        await settle()
        assert switcher.calls == ["a"] and not task.done()
        switcher.finish()
        await settle()
        lease = task.result()
        assert scheduler.current == "a" and scheduler.in_flight == 1
        lease.release()
        assert scheduler.in_flight == 0
    run(scenario())


def test_priority_then_arrival_order() -> None:
    async def scenario():
        scheduler, switcher = make(limit=1)
        first = await loaded(scheduler, switcher)
        holder = first.result()
        order: list[str] = []

        async def client(name: str, priority: int):
            lease = await scheduler.acquire("a", priority)
            order.append(name)
            lease.release()

        tasks = [asyncio.create_task(client(n, p)) for n, p in [("low1", 0), ("high", 5), ("low2", 0), ("mid", 1)]]
        await settle()
        assert order == []  # the one slot is held
        holder.release()
        await asyncio.gather(*tasks)
        assert order == ["high", "mid", "low1", "low2"]
    run(scenario())


def test_concurrency_limit_holds_the_rest_in_the_queue() -> None:
    async def scenario():
        scheduler, switcher = make(limit=2)
        tasks = [asyncio.create_task(scheduler.acquire("a")) for _ in range(5)]
        await settle()
        switcher.finish()
        await settle()
        assert scheduler.in_flight == 2 and sum(t.done() for t in tasks) == 2 and scheduler.depth == 3
        tasks[0].result().release()
        await settle()
        assert scheduler.in_flight == 2 and sum(t.done() for t in tasks) == 3
    run(scenario())


def test_queue_bound() -> None:
    async def scenario():
        scheduler, switcher = make(queue_max=2)
        tasks = [asyncio.create_task(scheduler.acquire("a")) for _ in range(2)]
        await settle()
        with pytest.raises(QueueFull):
            await scheduler.acquire("a")
        for task in tasks:
            task.cancel()
    run(scenario())


def test_fifo_policy_keeps_strict_arrival_order_across_models() -> None:
    async def scenario():
        scheduler, switcher = make(limit=1, policy="fifo")
        a1 = await loaded(scheduler, switcher)
        lease_a1 = a1.result()
        a2 = asyncio.create_task(scheduler.acquire("a"))   # waiting for a before b asked
        await settle()
        b1 = asyncio.create_task(scheduler.acquire("b"))
        await settle()
        a3 = asyncio.create_task(scheduler.acquire("a"))   # arrived after b: must not jump it
        await settle()
        assert switcher.calls == ["a"]                     # a has a request in flight: no switch
        lease_a1.release()
        await settle()
        assert a2.done() and not a3.done() and switcher.calls == ["a"]  # a2 was waiting first
        a2.result().release()
        await settle()
        assert switcher.calls == ["a", "b"]                # now a is idle: switch to b
        switcher.finish()
        await settle()
        assert b1.done() and not a3.done()
        b1.result().release()
        await settle()
        assert switcher.calls == ["a", "b", "a"]           # a3 is served after b, not starved
        switcher.finish()
        await settle()
        assert a3.done()
    run(scenario())


def test_failed_switch_fails_all_its_waiters_and_backs_off() -> None:
    async def scenario():
        clock = Clock()
        scheduler, switcher = make(clock=clock)
        waiters = [asyncio.create_task(scheduler.acquire("b")) for _ in range(3)]
        await settle()
        switcher.fail("out of memory")
        await settle()
        for waiter in waiters:
            with pytest.raises(SwitchFailed) as info:
                waiter.result()
            assert info.value.reason == "out of memory"
        with pytest.raises(SwitchFailed) as info:       # within the backoff window: at once, no new switch
            await scheduler.acquire("b")
        assert info.value.retry_after_s == 30 and switcher.calls == ["b"]
        clock.now += 31                                       # after the window: tried again
        retry = asyncio.create_task(scheduler.acquire("b"))
        await settle()
        assert switcher.calls == ["b", "b"]
        switcher.finish()
        await settle()
        assert retry.done()
    run(scenario())


def test_disconnected_client_leaves_the_queue() -> None:
    async def scenario():
        scheduler, switcher = make(limit=1)
        holder = await loaded(scheduler, switcher)
        gone = asyncio.create_task(scheduler.acquire("a"))
        stays = asyncio.create_task(scheduler.acquire("a"))
        await settle()
        assert scheduler.depth == 2
        gone.cancel()
        await settle()
        assert scheduler.depth == 1
        holder.result().release()
        await settle()
        assert stays.done() and scheduler.in_flight == 1
    run(scenario())


def test_a_lone_foreign_request_for_a_gone_client_does_not_switch() -> None:
    async def scenario():
        scheduler, switcher = make(limit=1)
        holder = await loaded(scheduler, switcher)
        b = asyncio.create_task(scheduler.acquire("b"))
        await settle()
        b.cancel()
        await settle()
        holder.result().release()
        await settle()
        assert switcher.calls == ["a"]  # nobody wants b any more
    run(scenario())


def test_engine_lost_restarts_through_a_switch() -> None:
    async def scenario():
        scheduler, switcher = make()
        first = await loaded(scheduler, switcher)
        first.result().release()
        switcher.loaded = None  # the engine died: the manager's record says nothing is ready
        scheduler.engine_lost()
        again = asyncio.create_task(scheduler.acquire("a"))
        await settle()
        assert switcher.calls == ["a", "a"]
        switcher.finish()
        await settle()
        assert again.done()
    run(scenario())


def test_loading_a_model_whose_engine_died_is_a_restart_and_says_so() -> None:
    async def scenario():
        died: set[str] = set()
        scheduler, switcher = make(restarting=lambda: died)
        (await loaded(scheduler, switcher)).result().release()
        assert switcher.decisions[-1].reason == "cold"
        switcher.loaded, died = None, {"a"}   # its engine died: nothing ready, a restarting
        scheduler.engine_lost()
        again = asyncio.create_task(scheduler.acquire("a"))
        await settle()
        assert switcher.decisions[-1] == Decision("a", "restart", "only")
        assert scheduler.waiting_for("a") == "restarting a"
        switcher.finish()
        await settle()
        assert again.done()
    run(scenario())


def test_fifo_policy_higher_priority_latecomers_cannot_starve_a_pending_switch() -> None:
    async def scenario():
        scheduler, switcher = make(limit=1, policy="fifo")
        holder = (await loaded(scheduler, switcher)).result()
        b = asyncio.create_task(scheduler.acquire("b"))                    # waits for a switch
        await settle()
        urgent = [asyncio.create_task(scheduler.acquire("a", 100)) for _ in range(3)]  # later, outranking b
        await settle()
        holder.release()
        await settle()
        assert not any(t.done() for t in urgent)        # they arrived after b: they wait behind the switch
        assert switcher.calls == ["a", "b"]
        switcher.finish()
        await settle()
        assert b.done()
    run(scenario())


def test_a_slot_granted_as_the_client_leaves_is_given_back() -> None:
    """The grant and the disconnect land in the same turn of the loop, in either order,
    through the gateway's own disconnect race: in_flight always returns to zero."""
    from animllm_cli.gateway.relay import ClientGone, race_disconnect

    async def scenario(disconnect_first: bool):
        scheduler, switcher = make(limit=1)
        holder = (await loaded(scheduler, switcher)).result()
        disconnect = asyncio.get_running_loop().create_future()

        async def receive() -> dict:
            return await disconnect

        waiting = asyncio.create_task(race_disconnect(receive, scheduler.acquire("a"),
                                                      discard=lambda lease: lease.release()))
        await settle()
        if disconnect_first:
            disconnect.set_result({"type": "http.disconnect"})
            holder.release()
        else:
            holder.release()
            disconnect.set_result({"type": "http.disconnect"})
        try:
            lease = await waiting
        except ClientGone:
            pass
        else:
            lease.release()  # won the race: the caller owns it and gives it back
        await settle()
        assert scheduler.in_flight == 0 and scheduler.depth == 0

    for disconnect_first in (True, False):
        run(scenario(disconnect_first))


def test_a_grant_cancelled_before_the_caller_resumes_is_given_back() -> None:
    async def scenario():
        scheduler, switcher = make(limit=1)
        holder = (await loaded(scheduler, switcher)).result()
        waiting = asyncio.create_task(scheduler.acquire("a"))
        await settle()
        holder.release()       # grants the waiting ticket (in_flight 1) ...
        waiting.cancel()       # ... and its caller is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert scheduler.in_flight == 0
    run(scenario())


# ------------------------------------------------------------------ the batch rule (the default)

async def client(scheduler: Scheduler, model: str, log: list[str], priority: float = 0) -> None:
    """A request: wait for a slot, note who ran, give the slot back at once."""
    lease = await scheduler.acquire(model, priority)
    log.append(model)
    lease.release()


def test_interleaved_arrivals_are_served_in_one_switch() -> None:
    async def scenario():
        scheduler, switcher = make(limit=2)
        holder = (await loaded(scheduler, switcher)).result()
        served: list[str] = []
        tasks = []
        for model in ["b", "a"] * 4:                        # b first: strict order would switch 7 times
            tasks.append(asyncio.create_task(client(scheduler, model, served)))
            await settle()
        assert served == ["a"] * 4                          # the loaded model's requests ran, b's wait
        holder.release()
        await settle()
        assert switcher.calls == ["a", "b"] and switcher.decisions[-1].reason == "idle"
        switcher.finish()
        await asyncio.gather(*tasks)
        assert served == ["a"] * 4 + ["b"] * 4 and switcher.calls == ["a", "b"]
    run(scenario())


def test_a_cold_start_with_interleaved_arrivals_costs_one_switch_per_model() -> None:
    async def scenario():
        scheduler, switcher = make(limit=1)
        served: list[str] = []
        tasks = [asyncio.create_task(client(scheduler, m, served)) for m in ["a", "b", "a", "b", "a", "b"]]
        await settle()
        assert switcher.decisions == [Decision("a", "cold", "only")]  # the first arrival starts it at once
        switcher.finish()
        await settle()
        switcher.finish()
        await asyncio.gather(*tasks)
        assert served == ["a"] * 3 + ["b"] * 3 and switcher.calls == ["a", "b"]
    run(scenario())


def test_the_fairness_bound_holds_under_an_endless_stream_for_the_loaded_model() -> None:
    async def scenario():
        clock = Clock()
        scheduler, switcher = make(limit=2, clock=clock, max_wait_s=60)
        running = [await loaded(scheduler, switcher)]      # a is busy when b arrives
        b = asyncio.create_task(scheduler.acquire("b"))
        b_arrived = clock.now
        started = 0
        while switcher.calls == ["a"]:      # a request for a every 5 s, each lasting 10 s: a is never idle
            running.append(asyncio.create_task(scheduler.acquire("a")))
            await settle()
            clock.now += 5
            if len(running) > 1 and running[0].done():
                running.pop(0).result().release()
                started += 1
            assert clock.now - b_arrived <= 60 + 10, "a kept the card past max_wait_s and its in-flight work"
            await settle()
        assert switcher.decisions[-1] == Decision("b", "max_wait", "overdue")
        assert 10 <= started <= 13                          # a ran until b had waited 60 s, and no longer
        switcher.finish()
        await settle()
        assert b.done()
        b.result().release()
        await settle()
        assert switcher.calls == ["a", "b", "a"]            # the held-back requests for a are served next
        switcher.finish()
        await settle()
        for task in running:
            (await task).release()
    run(scenario())


def test_the_batch_a_model_was_loaded_for_runs_even_when_others_become_overdue() -> None:
    async def scenario():
        clock = Clock()
        scheduler, switcher = make(limit=1, clock=clock, max_wait_s=10)
        (await loaded(scheduler, switcher)).result().release()
        served: list[str] = []
        tasks = [asyncio.create_task(client(scheduler, "b", served))]
        await settle()                                      # a is idle: the switch to b starts at once
        for model in ["a", "b", "b"]:                       # arrive during the (slow) switch
            tasks.append(asyncio.create_task(client(scheduler, model, served)))
        await settle()
        clock.now += 30                                     # the switch took longer than max_wait_s
        switcher.finish()
        await settle()
        assert served == ["b", "b", "b"]                    # not one b, then a switch back for a
        assert switcher.calls == ["a", "b", "a"] and switcher.decisions[-1].reason == "idle"
        switcher.finish()
        await asyncio.gather(*tasks)
    run(scenario())


def test_priority_within_a_model_and_a_models_turn() -> None:
    async def scenario():
        scheduler, switcher = make(limit=1)
        holder = (await loaded(scheduler, switcher)).result()
        order: list[str] = []

        async def named(model: str, name: str, priority: float) -> None:
            lease = await scheduler.acquire(model, priority)
            order.append(name)
            lease.release()

        tasks = [asyncio.create_task(named(m, n, p)) for m, n, p in
                 [("b", "b-low", 0), ("c", "c-low", 0), ("c", "c-high", 5)]]
        await settle()
        holder.release()
        await settle()
        assert switcher.decisions[-1] == Decision("c", "idle", "priority")  # c's best request outranks b's
        switcher.finish()
        await settle()
        assert order == ["c-high", "c-low"]                 # priority, then arrival, within c
        switcher.finish()
        await asyncio.gather(*tasks)
        assert order[-1] == "b-low" and switcher.calls == ["a", "c", "b"]
    run(scenario())


@pytest.mark.parametrize("c_waiting, first", [(3, Decision("b", "idle", "oldest")),      # 3 is not 4 x 1
                                                (4, Decision("c", "idle", "more_work"))])
def test_a_model_with_far_more_waiting_goes_before_an_older_waiter(c_waiting: int, first: Decision) -> None:
    async def scenario():
        scheduler, switcher = make(limit=1, batch_factor=4)
        holder = (await loaded(scheduler, switcher)).result()
        served: list[str] = []
        tasks = [asyncio.create_task(client(scheduler, "b", served))]
        await settle()
        tasks += [asyncio.create_task(client(scheduler, "c", served)) for _ in range(c_waiting)]
        await settle()
        holder.release()
        await settle()
        assert switcher.decisions[-1] == first
        for _ in range(2):
            await finish_next_switch(switcher)
        await asyncio.gather(*tasks)
        assert len(switcher.calls) == 3 and served == sorted(served, key=[first.model].__contains__, reverse=True)
    run(scenario())


def test_an_overdue_request_goes_before_a_busier_model() -> None:
    async def scenario():
        clock = Clock()
        scheduler, switcher = make(limit=1, clock=clock, max_wait_s=10, batch_factor=2)
        holder = (await loaded(scheduler, switcher)).result()
        served: list[str] = []
        tasks = [asyncio.create_task(client(scheduler, "b", served))]
        await settle()
        clock.now += 11
        tasks += [asyncio.create_task(client(scheduler, "c", served)) for _ in range(5)]
        await settle()
        holder.release()
        await settle()
        assert switcher.decisions[-1] == Decision("b", "idle", "overdue")
        for _ in range(2):
            switcher.finish()
            await settle()
        await asyncio.gather(*tasks)
        assert switcher.calls == ["a", "b", "c"]
    run(scenario())


def test_an_explicit_switch_waits_only_for_what_runs() -> None:
    async def scenario():
        scheduler, switcher = make(limit=1)
        holder = (await loaded(scheduler, switcher)).result()
        served: list[str] = []
        admin = asyncio.create_task(scheduler.acquire("b", urgent=True))
        await settle()
        later = asyncio.create_task(client(scheduler, "a", served))  # would join a's batch, but b is urgent
        await settle()
        holder.release()
        await settle()
        assert served == [] and switcher.decisions[-1] == Decision("b", "admin", "explicit")
        switcher.finish()
        await settle()
        admin.result().release()
        await settle()
        switcher.finish()
        await later
    run(scenario())


def test_a_failed_switch_fails_only_its_own_waiters() -> None:
    async def scenario():
        scheduler, switcher = make(limit=2)
        holder = (await loaded(scheduler, switcher)).result()
        b = [asyncio.create_task(scheduler.acquire("b")) for _ in range(2)]
        c = [asyncio.create_task(scheduler.acquire("c")) for _ in range(2)]
        a = asyncio.create_task(scheduler.acquire("a"))
        await settle()
        assert a.done()                                      # a is still loaded and has a slot: it runs
        holder.release()
        a.result().release()
        await settle()
        assert switcher.calls[-1] == "b"
        switcher.fail("out of memory")
        await settle()
        assert all(isinstance(t.exception(), SwitchFailed) for t in b)
        assert not any(t.done() for t in c) and switcher.calls[-1] == "c"  # c's turn comes, untouched
        switcher.finish()
        await settle()
        assert all(t.done() and t.exception() is None for t in c)
        for t in c:
            t.result().release()
        assert scheduler.in_flight == 0
    run(scenario())


@pytest.mark.parametrize("state", ["queued for the loaded model", "before its switch", "during its switch",
                                   "held back by an overdue request", "in the batch", "granted, not resumed"])
def test_a_waiter_cancelled_in_any_state_leaves_nothing_behind(state: str) -> None:
    async def scenario():
        clock = Clock()
        scheduler, switcher = make(limit=1, clock=clock, max_wait_s=10)
        holder = (await loaded(scheduler, switcher)).result()
        others: list[asyncio.Task] = []
        if state == "queued for the loaded model":
            victim = asyncio.create_task(scheduler.acquire("a"))
        elif state == "before its switch":
            victim = asyncio.create_task(scheduler.acquire("b"))
        elif state == "during its switch":
            victim = asyncio.create_task(scheduler.acquire("b"))
            await settle()
            holder.release()
            holder = None
        elif state == "held back by an overdue request":
            others.append(asyncio.create_task(scheduler.acquire("b")))
            await settle()
            clock.now += 11
            victim = asyncio.create_task(scheduler.acquire("a"))
        elif state == "in the batch":
            others.append(asyncio.create_task(scheduler.acquire("b")))
            victim = asyncio.create_task(scheduler.acquire("b"))
            await settle()
            holder.release()
            holder = None
            await settle()
            switcher.finish()                                # b loads: others[0] runs, the victim is batched
        else:
            victim = asyncio.create_task(scheduler.acquire("a"))
            await settle()
            holder.release()                                 # grants the victim ...
            holder = None
        if state != "granted, not resumed":
            await settle()
        victim.cancel()                                      # ... whose caller goes away before it resumes
        with pytest.raises(asyncio.CancelledError):
            await victim
        await settle()
        if holder is not None:
            holder.release()
        await settle()
        while switcher.pending is not None and not switcher.pending.done():
            switcher.finish()
            await settle()
        for task in others:
            (await task).release()
        await settle()
        assert scheduler.in_flight == 0 and scheduler.depth == 0 and scheduler.switching_to is None
    run(scenario())


def test_queues_report_per_model_counts_and_the_oldest_wait() -> None:
    async def scenario():
        clock = Clock()
        scheduler, switcher = make(limit=1, clock=clock)
        holder = (await loaded(scheduler, switcher)).result()
        tasks = [asyncio.create_task(scheduler.acquire("b"))]
        await settle()
        clock.now += 7
        tasks += [asyncio.create_task(scheduler.acquire(m)) for m in ("b", "a")]
        await settle()
        clock.now += 1
        queues = scheduler.queues()
        assert {m: (q.waiting, q.oldest_wait_s) for m, q in queues.items()} == {"b": (2, 8.0), "a": (1, 1.0)}
        for task in tasks:
            task.cancel()
        holder.release()
    run(scenario())


def test_fifo_policy_with_priorities_over_three_models_serves_everyone() -> None:
    """The switch goes to the oldest waiter, as the gate does: choosing by priority while
    gating by arrival switched back and forth for ever, serving nobody."""
    async def scenario():
        scheduler, switcher = make(limit=1, policy="fifo")
        holder = (await loaded(scheduler, switcher)).result()
        served: list[str] = []
        tasks = [asyncio.create_task(client(scheduler, m, served, p)) for m, p in [("b", 0), ("c", 5), ("a", 5)]]
        await settle()
        holder.release()
        for _ in range(3):
            await finish_next_switch(switcher)
        await asyncio.wait_for(asyncio.gather(*tasks), 1)
        assert served == ["b", "c", "a"] and switcher.calls == ["a", "b", "c", "a"]
    run(scenario())


def test_an_explicit_switch_does_not_wait_for_the_loaded_models_queue() -> None:
    async def scenario():
        scheduler, switcher = make(limit=1)
        holder = (await loaded(scheduler, switcher)).result()
        served: list[str] = []
        queued = [asyncio.create_task(client(scheduler, "a", served)) for _ in range(3)]  # before the switch
        await settle()
        admin = asyncio.create_task(scheduler.acquire("b", urgent=True))
        await settle()
        holder.release()
        await settle()
        assert served == [] and switcher.calls == ["a", "b"]
        switcher.finish()
        await settle()
        admin.result().release()
        await finish_next_switch(switcher)
        await asyncio.gather(*queued)
        assert served == ["a"] * 3
    run(scenario())


def test_the_oldest_overdue_request_goes_first_and_an_explicit_switch_before_it() -> None:
    async def scenario(with_admin: bool):
        clock = Clock()
        scheduler, switcher = make(limit=1, clock=clock, max_wait_s=10)
        holder = (await loaded(scheduler, switcher)).result()
        tasks = [asyncio.create_task(scheduler.acquire("b"))]
        await settle()
        clock.now += 5
        tasks.append(asyncio.create_task(scheduler.acquire("c")))
        await settle()
        if with_admin:
            tasks.append(asyncio.create_task(scheduler.acquire("d", urgent=True)))
            await settle()
        clock.now += 20                                      # b and c both overdue; b the older
        holder.release()
        await settle()
        expected = Decision("d", "admin", "explicit") if with_admin else Decision("b", "idle", "overdue")
        assert switcher.decisions[-1] == expected
        for task in tasks:
            task.cancel()
    for with_admin in (False, True):
        run(scenario(with_admin))


def test_a_client_gone_in_the_same_turn_as_a_release_starts_no_switch() -> None:
    async def scenario():
        scheduler, switcher = make(limit=1)
        holder = (await loaded(scheduler, switcher)).result()
        b = asyncio.create_task(scheduler.acquire("b"))
        await settle()
        b.cancel()
        holder.release()                                     # before b's own cleanup has run
        await settle()
        assert switcher.calls == ["a"] and scheduler.depth == 0
    run(scenario())


# ------------------------------------------------------------------ the engine pool's rules

def make_pool(capacity: int, *, pinned: frozenset[str] = frozenset(), limit: int = 1,
              clock=None) -> tuple[Scheduler, Switcher]:
    """A pool with room for `capacity` engines of any model, on one card."""
    scheduler, switcher = make(limit=limit, clock=clock, pinned=lambda m: m in pinned)
    scheduler._place = lambda model, evicting, loading: (0,) if len(switcher.residents - evicting) < capacity else None
    return scheduler, switcher


async def resident(scheduler: Scheduler, switcher: Switcher, *models: str, clock: Clock | None = None) -> None:
    """Load `models` one after another through requests that end at once (a second apart)."""
    for model in models:
        await load_through(scheduler, switcher, model)
        if clock:
            clock.now += 1


async def load_through(scheduler: Scheduler, switcher: Switcher, model: str) -> Decision:
    """A request for `model` that needs a switch: the decision, once the request has ended."""
    task = asyncio.create_task(scheduler.acquire(model))
    await settle()
    decision = switcher.decisions[-1]
    await finish_next_switch(switcher)
    (await task).release()
    return decision


def test_a_model_that_fits_loads_beside_and_the_resident_never_waits() -> None:
    async def scenario():
        scheduler, switcher = make_pool(2, limit=4)
        await resident(scheduler, switcher, "a")
        loading = asyncio.create_task(scheduler.acquire("b"))
        await settle()
        assert switcher.decisions[-1] == Decision("b", "beside", "only") and switcher.decisions[-1].evict == ()
        assert "loading b" in scheduler.waiting_for("b")
        during = await asyncio.wait_for(scheduler.acquire("a"), 1)  # a serves while b loads
        during.release()
        await finish_next_switch(switcher)
        (await loading).release()
        assert switcher.residents == {"a", "b"} and switcher.calls == ["a", "b"]
    run(scenario())


def test_a_model_that_does_not_fit_evicts_the_least_recently_used_idle_one() -> None:
    async def scenario():
        clock = Clock()
        scheduler, switcher = make_pool(2, clock=clock)
        await resident(scheduler, switcher, "a", "b", clock=clock)
        (await scheduler.acquire("a")).release()  # a is used after b: b is the least recently used
        clock.now += 1
        decision = await load_through(scheduler, switcher, "c")
        assert decision == Decision("c", "idle", "only") and decision.evict == ("b",)
        assert switcher.residents == {"a", "c"}
    run(scenario())


def test_a_request_in_flight_protects_its_model_even_when_it_is_the_least_recently_used() -> None:
    async def scenario():
        clock = Clock()
        scheduler, switcher = make_pool(2, clock=clock)
        await resident(scheduler, switcher, "a", "b", clock=clock)
        busy = await scheduler.acquire("a")  # a runs a request: b, idle, goes instead
        assert (await load_through(scheduler, switcher, "c")).evict == ("b",)
        busy.release()
        assert switcher.residents == {"a", "c"}
    run(scenario())


def test_when_every_resident_is_busy_the_switch_waits_for_the_one_it_evicts() -> None:
    async def scenario():
        clock = Clock()
        scheduler, switcher = make_pool(2, clock=clock)
        await resident(scheduler, switcher, "a", "b")
        on_a, on_b = await scheduler.acquire("a"), await scheduler.acquire("b")
        task = asyncio.create_task(scheduler.acquire("c"))
        await settle()
        assert switcher.calls == ["a", "b"]  # nothing is evicted while it runs a request
        on_a.release()                       # a is now idle: it goes, b keeps running
        await settle()
        assert switcher.decisions[-1].evict == ("a",) and switcher.decisions[-1].reason == "idle"
        await finish_next_switch(switcher)
        (await task).release()
        on_b.release()
        assert switcher.residents == {"b", "c"}
    run(scenario())


def test_a_pinned_model_is_never_evicted() -> None:
    async def scenario():
        clock = Clock()
        scheduler, switcher = make_pool(2, pinned=frozenset({"a"}), clock=clock)
        await resident(scheduler, switcher, "a", "b", clock=clock)
        (await scheduler.acquire("b")).release()  # a is least recently used, but pinned
        assert (await load_through(scheduler, switcher, "c")).evict == ("b",)
        assert "a" in switcher.residents
    run(scenario())


def test_no_room_beside_pinned_models_fails_the_request_at_once() -> None:
    async def scenario():
        scheduler, switcher = make_pool(1, pinned=frozenset({"a"}))
        await resident(scheduler, switcher, "a")
        with pytest.raises(SwitchFailed, match="pinned models \\(a\\)"):
            await asyncio.wait_for(scheduler.acquire("b"), 1)
        assert switcher.calls == ["a"] and scheduler.depth == 0
    run(scenario())


def test_unload_drains_then_evicts_and_nothing_new_starts_meanwhile() -> None:
    async def scenario():
        scheduler, switcher = make_pool(2, limit=4)
        await resident(scheduler, switcher, "a", "b")
        running = await scheduler.acquire("a")
        unloading = asyncio.create_task(scheduler.unload("a"))
        await settle()
        assert scheduler.try_acquire("a") is None and switcher.calls == ["a", "b"]
        late = asyncio.create_task(scheduler.acquire("a"))
        await settle()
        assert not late.done() and scheduler.draining == {"a"}  # waits: the model is draining
        running.release()
        await settle()
        assert switcher.decisions[-1] == Decision(None, "unload", "explicit") and switcher.decisions[-1].evict == ("a",)
        await finish_next_switch(switcher)
        await asyncio.wait_for(unloading, 1)
        assert switcher.calls[-1] == "a"     # the request that waited loads it again
        await finish_next_switch(switcher)
        (await late).release()
    run(scenario())


def test_a_model_being_evicted_starts_nothing_before_the_pool_marks_it() -> None:
    """The switch that evicts a is decided; a request for a in the same turn must wait
    (and load a again afterwards), never run on the engine being stopped."""
    async def scenario():
        clock = Clock()
        scheduler, switcher = make_pool(2, clock=clock, limit=4)
        await resident(scheduler, switcher, "a", "b", clock=clock)
        (await scheduler.acquire("b")).release()           # a is the least recently used
        for_c = asyncio.create_task(scheduler.acquire("c"))
        for_a = asyncio.create_task(scheduler.acquire("a"))
        await settle()
        assert switcher.decisions[-1].evict == ("a",) and not for_a.done()
        assert scheduler.try_acquire("a") is None and scheduler.running["a"] == 0
        await finish_next_switch(switcher)
        (await for_c).release()
        await finish_next_switch(switcher)                 # a comes back for its request
        (await for_a).release()
        assert all(count >= 0 for count in scheduler.running.values())
    run(scenario())


def test_a_request_before_a_keep_alive_unload_starts_keeps_the_model() -> None:
    async def scenario():
        scheduler, switcher = make_pool(2, limit=4)
        await resident(scheduler, switcher, "a", "b")
        busy = await scheduler.acquire("a")
        unloading = scheduler.request_unload("a", "keep_alive")  # waits for a's request to end
        lease = scheduler.try_acquire("a")                      # a new request keeps a
        assert lease is not None and unloading.done()
        lease.release()
        busy.release()
        await settle()
        assert switcher.residents == {"a", "b"} and switcher.calls == ["a", "b"]
    run(scenario())


def test_eviction_stops_only_what_makes_room() -> None:
    """a (least recently used) and b hold different GPUs; c fits only where b is: only b goes."""
    async def scenario():
        clock = Clock()
        scheduler, switcher = make_pool(2, clock=clock)
        scheduler._place = lambda model, evicting, loading: (1,) if "b" in evicting or "b" not in switcher.residents \
            else None
        await resident(scheduler, switcher, "a", "b", clock=clock)
        assert (await load_through(scheduler, switcher, "c")).evict == ("b",)
    run(scenario())


def test_a_remote_model_starts_at_once_even_during_a_switch_and_is_never_switched_to_or_evicted() -> None:
    async def scenario():
        scheduler, switcher = make(limit=1, remote={"far"})
        fast = scheduler.try_acquire("far")  # nothing loaded, nothing to load
        assert fast is not None and switcher.calls == []
        loading = asyncio.create_task(scheduler.acquire("a"))
        await settle()
        assert switcher.calls == ["a"]  # a switch in progress...
        queued = asyncio.create_task(scheduler.acquire("far"))
        await settle()
        assert not queued.done()  # ...the remote's concurrency limit (1) holds the second request
        fast.release()
        await settle()
        assert queued.done() and switcher.calls == ["a"]  # started without waiting for the switch
        queued.result().release()
        await finish_next_switch(switcher)
        loading.result().release()
        b = asyncio.create_task(scheduler.acquire("b"))  # evicts a, never the remote one
        await settle()
        assert switcher.decisions[-1].evict == ("a",) and scheduler.request_unload("far", "unload") is None
        await finish_next_switch(switcher)
        b.result().release()
        assert scheduler.waiting_for("far") == "waiting for a free slot on far"
    run(scenario())


def test_remote_requests_keep_their_priority_order() -> None:
    async def scenario():
        scheduler, _ = make(limit=1, remote={"far"})
        holder = scheduler.try_acquire("far")
        order: list[int] = []

        async def client(priority: int) -> None:
            lease = await scheduler.acquire("far", priority)
            order.append(priority)
            lease.release()

        tasks = [asyncio.create_task(client(p)) for p in (0, 7, 3)]
        await settle()
        holder.release()
        await asyncio.gather(*tasks)
        assert order == [7, 3, 0]
    run(scenario())


def test_a_full_queue_of_local_waiters_does_not_refuse_a_remote_request_with_a_free_slot() -> None:
    async def scenario():
        scheduler, switcher = make(limit=2, queue_max=2, remote={"far"})
        waiters = [asyncio.create_task(scheduler.acquire("a")) for _ in range(2)]  # a load pending, queue full
        await settle()
        with pytest.raises(QueueFull):
            scheduler.check("a")
        lease = scheduler.try_acquire("far")
        assert lease is not None and switcher.calls == ["a"]
        lease.release()
        await finish_next_switch(switcher)
        for task in waiters:
            task.result().release()
    run(scenario())

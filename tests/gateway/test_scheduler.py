"""The scheduler alone: no HTTP, no sleeps. A fake switch that the test completes by hand."""

from __future__ import annotations

import asyncio

import pytest

from animllm_cli.gateway.scheduler import QueueFull, Scheduler, SwitchFailed


class Switcher:
    """Records switch requests; each stays pending until the test finishes or fails it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.pending: asyncio.Future | None = None
        self.loaded: str | None = None  # the engine manager's record, which the scheduler reads

    async def __call__(self, model: str) -> None:
        self.calls.append(model)
        self.pending = asyncio.get_running_loop().create_future()
        await self.pending

    def finish(self) -> None:
        self.loaded = self.calls[-1]
        self.pending.set_result(None)

    def fail(self, reason: str) -> None:
        self.loaded = None
        self.pending.set_exception(RuntimeError(reason))


def make(limit: int = 1, queue_max: int = 100, clock=None) -> tuple[Scheduler, Switcher]:
    switcher = Switcher()
    kwargs = {"clock": clock} if clock else {}
    return Scheduler(switcher, lambda model: limit, lambda: switcher.loaded, queue_max=queue_max, backoff_s=30,
                     **kwargs), switcher


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


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


def test_no_eviction_while_in_flight_and_same_model_grouping() -> None:
    async def scenario():
        scheduler, switcher = make(limit=1)
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
        now = [100.0]
        scheduler, switcher = make(clock=lambda: now[0])
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
        now[0] += 31                                       # after the window: tried again
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


def test_higher_priority_latecomers_cannot_starve_a_pending_switch() -> None:
    async def scenario():
        scheduler, switcher = make(limit=1)
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

"""Fair shares between the clients of one model (gateway/scheduler.py): a client that
queues two hundred requests does not make another's five wait behind all of them; weights
share the slots unevenly; priority still wins across levels; a client's concurrency cap and
its share of the queue hold. The scheduler alone, with an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from animllm_cli.gateway.scheduler import ANYONE, Claimant, QueueFull
from tests.gateway.test_scheduler import Clock, loaded, make, run, settle

A, B = Claimant("batch-job"), Claimant("artist")


async def serve_in_order(scheduler, tasks: list[tuple[str, asyncio.Task]]) -> list[str]:
    """Release each granted lease in turn (one slot), and return whose request got each slot."""
    order: list[str] = []
    pending = list(tasks)
    while pending:
        await settle()
        done = [(who, task) for who, task in pending if task.done()]
        assert len(done) == 1, "one slot: exactly one request runs at a time"
        who, task = done[0]
        order.append(who)
        pending.remove(done[0])
        task.result().release()
    return order


def test_a_clients_five_requests_finish_before_anothers_two_hundred_do() -> None:
    async def scenario(a_claimant: Claimant, b_claimant: Claimant) -> list[str]:
        clock = Clock()
        scheduler, switcher = make(limit=1, queue_max=1000, clock=clock)
        first = (await loaded(scheduler, switcher)).result()  # a loaded; its slot held by an earlier request
        tasks = [("A", asyncio.create_task(scheduler.acquire("a", claimant=a_claimant))) for _ in range(200)]
        await settle()
        clock.now += 1.0
        tasks += [("B", asyncio.create_task(scheduler.acquire("a", claimant=b_claimant))) for _ in range(5)]
        await settle()
        first.release()
        return await serve_in_order(scheduler, tasks)

    fair = run(scenario(A, B))
    last_b = max(i for i, who in enumerate(fair) if who == "B")
    assert fair.count("B") == 5 and last_b < 15, fair[:20]  # B's five among the first slots, A's turns between
    assert fair[:10] == ["A", "B"] * 5
    # The control: one anonymous crowd is plain arrival order, and B's five wait behind all of A's.
    crowd = run(scenario(ANYONE, ANYONE))
    assert crowd.index("B") == 200


def test_weights_share_the_slots_unevenly() -> None:
    async def scenario() -> list[str]:
        scheduler, switcher = make(limit=1, queue_max=1000)
        first = (await loaded(scheduler, switcher)).result()
        heavy, light = Claimant("heavy", weight=3.0), Claimant("light", weight=1.0)
        tasks = [(name, asyncio.create_task(scheduler.acquire("a", claimant=who)))
                 for _ in range(20) for name, who in (("H", heavy), ("L", light))]
        await settle()
        first.release()
        return await serve_in_order(scheduler, tasks)

    order = run(scenario())
    assert order[:16].count("H") == 12 and order[:16].count("L") == 4  # three turns to one


def test_priority_still_wins_across_levels() -> None:
    async def scenario() -> list[str]:
        scheduler, switcher = make(limit=1, queue_max=1000)
        first = (await loaded(scheduler, switcher)).result()
        tasks = [("A", asyncio.create_task(scheduler.acquire("a", claimant=A))) for _ in range(5)]
        tasks += [("B", asyncio.create_task(scheduler.acquire("a", priority=5, claimant=B))) for _ in range(3)]
        await settle()
        first.release()
        return await serve_in_order(scheduler, tasks)

    assert run(scenario()) == ["B"] * 3 + ["A"] * 5


def test_a_clients_concurrency_cap_and_queue_share_hold() -> None:
    async def scenario() -> None:
        scheduler, switcher = make(limit=4, queue_max=10)
        await loaded(scheduler, switcher)
        capped = Claimant("capped", concurrency=2, queue_limit=3)
        tasks = [asyncio.create_task(scheduler.acquire("a", claimant=capped)) for _ in range(5)]
        await settle()
        assert sum(t.done() for t in tasks) == 2 and scheduler.clients()["capped"] == (3, 2)
        with pytest.raises(QueueFull) as full:
            await scheduler.acquire("a", claimant=capped)
        assert (full.value.client, full.value.limit) == ("capped", 3)
        other = asyncio.create_task(scheduler.acquire("a", claimant=B))  # the model's other slots are free
        await settle()
        assert other.done() and scheduler.try_acquire("a", capped) is None
        tasks[0].result().release()
        await settle()
        assert sum(t.done() for t in tasks) == 3 and scheduler.client_running["capped"] == 2
    run(scenario())


def test_a_client_whose_requests_went_away_gets_its_turn_back() -> None:
    async def scenario() -> list[str]:
        scheduler, switcher = make(limit=1, queue_max=1000)
        first = (await loaded(scheduler, switcher)).result()
        gone = [asyncio.create_task(scheduler.acquire("a", claimant=A)) for _ in range(50)]
        await settle()
        for task in gone:  # A's clients hung up
            task.cancel()
        tasks = [("B", asyncio.create_task(scheduler.acquire("a", claimant=B))) for _ in range(10)]
        await settle()
        tasks.append(("A", asyncio.create_task(scheduler.acquire("a", claimant=A))))
        await settle()
        first.release()
        return await serve_in_order(scheduler, tasks)

    assert run(scenario()).index("A") <= 1  # not behind B's ten for the fifty it no longer has waiting

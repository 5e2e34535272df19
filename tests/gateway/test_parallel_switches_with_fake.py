"""Switches that run at once on several GPUs: a switch whose GPUs and victims meet no
running switch's starts beside it; one that shares a GPU or a victim waits for it; a
failure fails only its own waiters. First through the real gateway, with fake engines on
two fake cards (the fake NVML) whose starts the test holds and lets go; then the
scheduler's rule alone, with a pool driven by hand."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from animllm_cli.gateway.scheduler import Decision, Scheduler, SwitchFailed
from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.support.gateways import fake_gateway_config, start_bound_s, start_gateway
from tests.support.waiting import wait_until

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
# A held start ends on its own after this long: far past any wait here, within the start timeout.
HELD_S = 100
ENGINE = {"start_timeout_s": 120, "stall_timeout_s": 120}
# Two 16 GiB cards; at share 0.4 two engines fit on one. v is loaded at start.
APART = {"a": {"share": 0.4, "gpus": [0]}, "b": {"share": 0.4, "gpus": [1]}, "v": {"share": 0.4, "gpus": [0]}}
SAME_GPU = {"a": {"share": 0.4, "gpus": [0]}, "b": {"share": 0.4, "gpus": [0]}, "v": {"share": 0.4, "gpus": [1]}}


class TwoCards:
    """A gateway over two fake cards whose `held` models start only when `release` lets them."""

    def __init__(self, tmp_path: Path, models: dict, held: tuple[str, ...], crash_models: str = "") -> None:
        self.go = tmp_path / "go"
        self.go.mkdir()
        env = {"FAKE_VLLM_SLOW_MODELS": ",".join(f"org/model-{m}" for m in held), "FAKE_VLLM_GO_DIR": str(self.go)}
        path = fake_gateway_config(tmp_path, models=models, after=HELD_S, engine=ENGINE, env=env,
                                   crash_models=crash_models)
        cards = [FakeGpu(engine_bytes="share") for _ in range(2)]
        self.gw = start_gateway(tmp_path, path, model="v", nvml=FakeNvml(cards))
        self.bound_s = start_bound_s(self.gw.gateway.loaded)
        self.requests = ThreadPoolExecutor(4)
        self.client = self.gw.client()

    def ask(self, model: str) -> httpx.Response:
        """A request of its own (it may run on a thread of `requests`), waiting as long as the product may."""
        return httpx.post(f"{self.gw.url}/v1/chat/completions", json={"model": model, **CHAT}, timeout=self.bound_s)

    def ask_later(self, model: str) -> Future:
        return self.requests.submit(self.ask, model)

    def switch_later(self, model: str) -> Future:
        """`animllm switch MODEL` (its admin call) on a thread of `requests`."""
        return self.requests.submit(lambda: httpx.post(f"{self.gw.url}/admin/switch", json={"model": model},
                                                       timeout=self.bound_s))

    def release(self, model: str) -> None:
        (self.go / f"model-{model}").touch()

    def status(self) -> dict:
        return self.client.get("/admin/status").json()

    def state(self, model: str) -> str | None:
        return next((e["state"] for e in self.status()["engines"] if e["model"] == model), None)

    def wait_starting(self, model: str) -> None:
        wait_until(lambda: self.state(model) == "starting", self.bound_s, f"{model}'s engine to be starting")

    def wait_queued(self, model: str, count: int = 1) -> None:
        wait_until(lambda: self.status()["queues"].get(model, {}).get("waiting") == count, self.bound_s,
                   f"{count} request(s) for {model} in the queue")

    def switches(self) -> list[tuple]:
        """The switches that ended, in the order they ended: model, GPUs, evicted, outcome."""
        return [(s["to_model"], s["gpus"], s["evicted"], s["outcome"]) for s in self.status()["recent_switches"]]

    def close(self) -> None:
        for model in ("a", "b"):
            self.release(model)  # nothing left held: the gateway stops at once
        self.requests.shutdown(wait=True)
        self.client.close()
        self.gw.stop()


@pytest.fixture
def two_cards(tmp_path: Path):
    started: list[TwoCards] = []

    def start(models: dict, held: tuple[str, ...] = ("a",), crash_models: str = "") -> TwoCards:
        started.append(TwoCards(tmp_path, models, held, crash_models))
        return started[-1]

    yield start
    for cards in started:
        cards.close()


def test_a_switch_on_the_other_gpu_starts_and_is_ready_while_a_slow_one_still_runs(two_cards) -> None:
    cards = two_cards(APART, held=("a", "b"))
    for_a = cards.ask_later("a")
    cards.wait_starting("a")
    for_b = cards.ask_later("b")
    cards.wait_starting("b")                       # both engines start at once, one per card
    engine = cards.status()["engine"]
    assert (engine["state"], engine["switching_to"], engine["switching"]) == ("switching", "a", ["a", "b"])
    cards.release("b")
    assert for_b.result(timeout=cards.bound_s).status_code == 200
    assert not for_a.done() and cards.state("a") == "starting"   # b is ready while a's switch runs on
    assert cards.status()["engine"]["switching"] == ["a"]
    cards.release("a")
    assert for_a.result(timeout=cards.bound_s).status_code == 200
    assert cards.switches()[-2:] == [("b", [1], [], "ok"), ("a", [0], [], "ok")]   # b's ended first
    assert cards.status()["engine"]["switching"] == []


def test_each_explicit_switch_answers_with_its_own_report(two_cards) -> None:
    """Two `animllm switch` calls whose switches end together: each reports its own
    switch, not whichever ended last."""
    cards = two_cards(APART, held=("a", "b"))
    to_a = cards.switch_later("a")
    cards.wait_starting("a")
    to_b = cards.switch_later("b")
    cards.wait_starting("b")
    cards.release("a")
    cards.release("b")
    for model, answer in (("a", to_a), ("b", to_b)):
        report = answer.result(timeout=cards.bound_s).json()
        assert (report["to_model"], report["outcome"], report["gpus"]) == (model, "ok", [0 if model == "a" else 1])


def test_a_switch_measures_its_model_on_its_own_gpu(two_cards) -> None:
    """b goes on GPU 1 (v holds GPU 0): what its start took is read there, not on GPU 0."""
    cards = two_cards(APART, held=())
    assert cards.ask("b").status_code == 200
    report = cards.status()["recent_switches"][-1]
    assert (report["to_model"], report["gpus"]) == ("b", [1])
    assert report["vram_free_before"] - report["vram_free_after"] >= 6 * 1024 ** 3   # 0.4 of a 16 GiB card


def test_two_switches_onto_the_same_gpu_run_one_after_the_other(two_cards) -> None:
    cards = two_cards(SAME_GPU)
    for_a = cards.ask_later("a")
    cards.wait_starting("a")
    for_b = cards.ask_later("b")
    cards.wait_queued("b")                         # decided on arrival: it waits for a's switch
    assert cards.ask("v").json()["model"] == "v"   # the resident on the other card serves meanwhile (and its end decides again)
    assert cards.status()["engine"]["switching"] == ["a"] and cards.state("b") is None
    cards.release("a")
    assert for_a.result(timeout=cards.bound_s).status_code == 200
    assert for_b.result(timeout=cards.bound_s).status_code == 200
    assert cards.switches()[-2:] == [("a", [0], [], "ok"), ("b", [0], [], "ok")]


def test_a_failed_switch_fails_only_its_own_waiters(two_cards) -> None:
    cards = two_cards(APART, crash_models="org/model-b")
    first_for_a = cards.ask_later("a")
    cards.wait_starting("a")
    failed = cards.ask("b")                        # b's engine crashes on GPU 1 while a's starts on GPU 0
    assert failed.status_code == 503 and "weights are corrupt" in failed.text, failed.text
    status = cards.status()
    assert "b" in status["backoff"] and "a" not in status["backoff"]
    assert status["engine"]["switching"] == ["a"] and cards.state("a") == "starting" and not first_for_a.done()
    second_for_a = cards.ask_later("a")
    cards.wait_queued("a", 2)
    cards.release("a")
    assert first_for_a.result(timeout=cards.bound_s).status_code == 200
    assert second_for_a.result(timeout=cards.bound_s).status_code == 200
    assert cards.switches()[-2:] == [("b", [], [], "failed"), ("a", [0], [], "ok")]


# ------------------------------------------------------------------ the rule alone

class HandPool:
    """Two cards driven by hand: `gpus` says where each model goes, `needs` which residents
    must go first for it to fit. Each switch stays pending until the test ends it; its
    victims leave when it ends (the pool stops them during the switch)."""

    def __init__(self, gpus: dict[str, tuple[int, ...]], needs: dict[str, set[str]] | None = None,
                 residents: set[str] | None = None) -> None:
        self.gpus, self.needs = gpus, needs or {}
        self.residents = set(residents or ())
        self.started: list[Decision] = []
        self.claimed: list[str | None] = []   # what the scheduler told the pool it began, in order
        self.claimed_when_started: dict[str | None, list[str | None]] = {}
        self.pending: dict[str | None, tuple[Decision, asyncio.Future]] = {}

    def place(self, model: str, evicting: frozenset[str], loading: dict) -> tuple[int, ...] | None:
        return self.gpus[model] if self.needs.get(model, set()) & self.residents <= evicting else None

    async def __call__(self, decision: Decision) -> None:
        self.started.append(decision)
        self.claimed_when_started[decision.model] = list(self.claimed)
        done = asyncio.get_running_loop().create_future()
        self.pending[decision.model] = (decision, done)
        await done

    def end(self, model: str | None, error: str | None = None) -> None:
        decision, done = self.pending.pop(model)
        self.residents -= set(decision.evict)
        if error:
            done.set_exception(RuntimeError(error))
        else:
            self.residents |= {model} if model else set()
            done.set_result(None)

    def scheduler(self) -> Scheduler:
        return Scheduler(self, lambda model: 4, lambda: self.residents, queue_max=100, place=self.place,
                         claim=lambda decision: self.claimed.append(decision.model))


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def started(pool: HandPool) -> list[str | None]:
    return [d.model for d in pool.started]


def test_the_rule_runs_apart_switches_at_once() -> None:
    async def scenario():
        pool = HandPool({"a": (0,), "b": (1,)})
        scheduler = pool.scheduler()
        for_a, for_b = asyncio.create_task(scheduler.acquire("a")), asyncio.create_task(scheduler.acquire("b"))
        await settle()
        assert started(pool) == ["a", "b"] and scheduler.switching == ["a", "b"] and scheduler.switching_to == "a"
        pool.end("b")
        await settle()
        assert for_b.done() and not for_a.done()
        assert scheduler.waiting_for("a") == "loading a"
        assert scheduler.waiting_for("c") == "waiting for c: a is being loaded first"
        pool.end("a")
        await settle()
        assert for_a.done() and scheduler.operation is None
    asyncio.run(scenario())


@pytest.mark.parametrize("gpus, needs", [
    ({"a": (0,), "b": (0,)}, {}),                             # a GPU in common
    ({"a": (0,), "b": (0, 1)}, {}),                           # one spans the other's GPU
    ({"a": (0,), "b": (1,)}, {"a": {"v"}, "b": {"v"}}),       # a victim in common
], ids=["same-gpu", "tensor-parallel", "same-victim"])
def test_the_rule_runs_switches_that_meet_one_after_the_other(gpus, needs) -> None:
    async def scenario():
        pool = HandPool({**gpus, "v": (0, 1)}, needs, residents={"v"})
        scheduler = pool.scheduler()
        for_a = asyncio.create_task(scheduler.acquire("a"))
        await settle()
        for_b = asyncio.create_task(scheduler.acquire("b"))
        await settle()
        assert started(pool) == ["a"] and scheduler.switching == ["a"]
        assert scheduler.waiting_for("b") == "waiting for b: a is being loaded first"
        pool.end("a")
        await settle()
        assert started(pool) == ["a", "b"] and for_a.done()
        assert pool.started[1].evict == ()                    # decided afresh: a shared victim is gone by now
        pool.end("b")
        await settle()
        assert for_b.done()
    asyncio.run(scenario())


def test_the_rule_fails_only_the_failed_switchs_waiters() -> None:
    async def scenario():
        pool = HandPool({"a": (0,), "b": (1,)})
        scheduler = pool.scheduler()
        for_a = [asyncio.create_task(scheduler.acquire("a")) for _ in range(2)]
        for_b = [asyncio.create_task(scheduler.acquire("b")) for _ in range(2)]
        await settle()
        pool.end("b", error="b's engine crashed")
        await settle()
        for task in for_b:
            with pytest.raises(SwitchFailed, match="crashed"):
                task.result()
        assert not any(task.done() for task in for_a) and scheduler.switching == ["a"]
        assert "b" in scheduler.backoff_until and "a" not in scheduler.backoff_until
        pool.end("a")
        await settle()
        assert all(task.done() and task.exception() is None for task in for_a)
        for task in for_a:
            task.result().release()
    asyncio.run(scenario())


def test_the_rule_runs_an_unload_alone() -> None:
    """An unload of the resident on the other card waits for the switch that runs; a
    switch asked for meanwhile waits for the unload."""
    async def scenario():
        pool = HandPool({"a": (0,), "b": (1,)}, residents={"r"})
        scheduler = pool.scheduler()
        for_a = asyncio.create_task(scheduler.acquire("a"))
        await settle()
        unloaded = scheduler.request_unload("r", "unload")
        await settle()
        assert started(pool) == ["a"]
        pool.end("a")
        await settle()
        assert started(pool) == ["a", None] and for_a.done()
        for_b = asyncio.create_task(scheduler.acquire("b"))
        await settle()
        assert started(pool) == ["a", None]
        pool.end(None)
        await settle()
        assert unloaded.done() and started(pool) == ["a", None, "b"]
        pool.end("b")
        await settle()
        assert for_b.done()
    asyncio.run(scenario())


def test_the_rule_tells_the_pool_of_each_switch_before_any_runs() -> None:
    """b's switch begins in the same turn as a's: by the time a's switch makes room (and
    decides which sleepers it may stop), the pool knows b's claim already."""
    async def scenario():
        pool = HandPool({"a": (0,), "b": (1,)})
        scheduler = pool.scheduler()
        tasks = [asyncio.create_task(scheduler.acquire(m)) for m in ("a", "b")]
        await settle()
        assert started(pool) == ["a", "b"] and pool.claimed == ["a", "b"]
        assert pool.claimed_when_started == {"a": ["a", "b"], "b": ["a", "b"]}
        pool.end("a")
        pool.end("b")
        await settle()
        for task in tasks:
            task.result().release()
    asyncio.run(scenario())


def test_the_rule_starts_no_switch_beside_running_ones_while_an_unload_waits() -> None:
    """Steady demand on two cards must not starve an unload: once it may run, the switches
    asked for meanwhile wait for it, even one on a card no running switch loads onto."""
    async def scenario():
        pool = HandPool({"a": (0,), "b": (1,), "c": (0,)}, residents={"r"})
        scheduler = pool.scheduler()
        for_a = asyncio.create_task(scheduler.acquire("a"))
        await settle()
        unloaded = scheduler.request_unload("r", "unload")
        for_b = asyncio.create_task(scheduler.acquire("b"))   # on GPU 1, apart from a's switch
        await settle()
        assert started(pool) == ["a"]                          # it would have started beside a
        pool.end("a")
        await settle()
        assert started(pool) == ["a", None]                    # the unload, alone
        pool.end(None)
        await settle()
        assert unloaded.done() and started(pool) == ["a", None, "b"]
        pool.end("b")
        await settle()
        for task in (for_a, for_b):
            task.result().release()
    asyncio.run(scenario())

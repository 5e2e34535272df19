"""A resident's one state (gateway/resident.py): the transitions its table allows, the ones
it refuses, and the races its methods settle. No engine: the state never asks one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import get_args

import pytest

from animllm_cli.engine.supervisor import State as EngineLifecycle
from animllm_cli.gateway.resident import ALLOWED, Resident, ResidentState, TransitionError
from animllm_cli.gpu.planner import Share
from animllm_cli.wire import EngineState

S = ResidentState


def fresh(weights: int = 5 * 2**30, engine: EngineLifecycle = EngineLifecycle.READY) -> Resident:
    """A resident whose engine is only its lifecycle state (the resident reads nothing else of it)."""
    return Resident("a", SimpleNamespace(state=engine), (0,),  # type: ignore[arg-type]
                    Share("a", 0.5, 0, "share", weight_bytes=weights), {0: 2**33})


def test_a_resident_starts_and_goes_through_sleep_and_wake_to_stopped() -> None:
    resident = fresh()
    seen = [resident.state]
    for step in (resident.ready, lambda: resident.fall_asleep(2), resident.wake, resident.woke, resident.leave,
                 resident.gone):
        step()
        seen.append(resident.state)
    assert seen == [S.STARTING, S.READY, S.SLEEPING, S.WAKING, S.READY, S.STOPPING, S.STOPPED]
    assert ALLOWED[S.STOPPED] == frozenset()


def test_every_state_is_a_word_of_the_wire_vocabulary() -> None:
    shown = set(get_args(EngineState))
    assert {s.value for s in S} <= shown and shown - {s.value for s in S} == {"none", "draining", "switching"}


def test_a_transition_the_table_forbids_raises_and_changes_nothing() -> None:
    resident = fresh()
    with pytest.raises(TransitionError, match="from starting to sleeping"):
        resident.fall_asleep(1)
    assert resident.state is S.STARTING and resident.sleep_level is None
    resident.ready()
    with pytest.raises(TransitionError):
        resident.woke()   # never asleep
    assert resident.state is S.READY


def test_a_death_against_a_stop_leaves_the_stop_to_win() -> None:
    dying = fresh()
    dying.ready()
    assert dying.died() and dying.state is S.DEAD
    dying.leave()                                       # the next switch stops a dead engine
    assert dying.state is S.STOPPING
    assert not dying.died() and dying.state is S.STOPPING
    dying.leave()                                       # a shutdown during that switch stops it too
    dying.gone()
    dying.gone()
    assert dying.state is S.STOPPED
    assert not fresh().died()                           # a starting engine is not watched yet


def test_the_sleep_level_is_data_beside_the_state_and_a_level_1_wake_keeps_the_host_buffer() -> None:
    resident = fresh(weights=5 * 2**30)
    resident.ready()
    resident.fall_asleep(1)
    resident.host_bytes = 5 * 2**30
    assert (resident.state, resident.sleep_level, resident.holding(0)) == (S.SLEEPING, 1, 2**30)  # the estimate
    resident.wake()
    assert resident.sleep_level == 1 and resident.holding(0) == 2**33   # waking: counted awake
    resident.woke()
    assert (resident.sleep_level, resident.host_bytes, resident.host_kept) == (None, 0, 5 * 2**30)


def test_a_death_seen_while_starting_is_taken_when_it_becomes_ready() -> None:
    """The watcher saw the engine die before the pool recorded its ready (a stalled loop):
    `died()` passes over a starting resident, so `ready()` must not leave it ready."""
    resident = fresh(engine=EngineLifecycle.DEAD)
    assert not resident.died() and resident.state is S.STARTING
    resident.ready()
    assert resident.state is S.DEAD


def test_a_dead_victim_is_stopped_not_sent_to_sleep() -> None:
    """`unload --sleep` waits for the model's requests; should its engine die meanwhile,
    the switch stops it (with a note) rather than try a sleep the table forbids."""
    from animllm_cli.config.schema import AnimllmConfig
    from animllm_cli.gateway.placement import PoolView
    from animllm_cli.gateway.scheduler import Decision
    from animllm_cli.gateway.sleep_policy import SleepPolicy
    from animllm_cli.gpu.nvml import GpuReport

    cfg = AnimllmConfig.model_validate({"models": {"a": {"source": "org/a"}}, "gpu": {"vram_gib": 16}})
    loaded = SimpleNamespace(config=cfg)
    dead = fresh()
    dead.ready()
    dead.sleep_mode = True
    dead.died()
    view = PoolView(cfg, {"a": dead}, GpuReport(gpus=[]), lambda model, card: Share(model, 0.5, 0, "share"))
    notes: list[str] = []
    levels, stop = SleepPolicy(loaded, None, lambda: 64 * 2**30).leaving(  # type: ignore[arg-type]
        view, Decision(None, "sleep", "explicit", ("a",)), notes)
    assert (levels, stop) == ({}, ["a"])
    assert notes == ["a: stopped, not sent to sleep: it is dead"]


def test_a_dead_engine_leaves_what_the_latest_nvml_reading_shows_of_its_processes() -> None:
    """Room counts what a dead engine's processes still hold as coming back (its stop frees
    it), as the reading that NVML's used memory comes from shows them: taken while it ran,
    its footprint; taken once its processes were gone (before the loop took the death), nothing:
    NVML's used memory no longer holds it, and counting its footprint again would be room
    that is not there. A process in the reading is the engine's even if it ended the moment
    after: else its memory, in the reading's used memory, would be nobody's room."""
    from animllm_cli.gpu.nvml import Gpu, GpuProcess

    def reading(held: dict[int, int]) -> list[Gpu]:
        return [Gpu(0, "fake", "GPU-0", "12.0", "blackwell", 2**34, sum(held.values()), 2**34 - sum(held.values()),
                    [GpuProcess(pid, "python", used) for pid, used in held.items()])]

    def resident(living: set[int]) -> Resident:
        engine = SimpleNamespace(state=EngineLifecycle.READY, pids=lambda: set(living),
                                 pids_ever=lambda: {7} | living)
        each = Resident("a", engine, (0,), Share("a", 0.5, 0, "share"), {0: 2**33})  # type: ignore[arg-type]
        each.ready()
        return each

    seen_alive = resident(living := {7})
    seen_alive.measure(reading({7: 6 * 2**30}))
    assert seen_alive.left_on(0) == 0                   # alive: nothing left over
    seen_alive.died()
    assert seen_alive.left_on(0) == 6 * 2**30

    seen_gone = resident(living := {7})
    seen_gone.measure(reading({7: 6 * 2**30}))
    living.clear()                                      # its processes are gone; still ready on the loop
    seen_gone.measure(reading({}))
    seen_gone.died()
    assert seen_gone.left_on(0) == 0

    gone_after_the_reading = resident(living := {7})
    gone_after_the_reading.died()
    taken_while_it_ran = reading({7: 6 * 2**30})
    living.clear()                                      # it ended between NVML's reading and its measure
    gone_after_the_reading.measure(taken_while_it_ran)
    assert gone_after_the_reading.left_on(0) == 6 * 2**30

"""Placement as pure arithmetic (gateway/placement.py): cards from NVML's report or the
configured card size, residents that hold memory awake or asleep, and max_engines. No
engine and no pool: residents are records, shares a fixed fraction of each card."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from animllm_cli.config.schema import AnimllmConfig
from animllm_cli.engine.supervisor import State as EngineLifecycle
from animllm_cli.gateway import placement
from animllm_cli.gateway.placement import PoolView
from animllm_cli.gateway.resident import Resident
from animllm_cli.gpu.nvml import Gpu, GpuReport
from animllm_cli.gpu.planner import Share
from animllm_cli.units import GIB

CARD = 16 * GIB
DESKTOP = int(0.4 * GIB)


def config(*, vram_gib: float | None = None, gpus: dict[str, list[int]] | None = None, **pool) -> AnimllmConfig:
    models = {name: {"source": f"org/{name}", "gpus": (gpus or {}).get(name)} for name in ("a", "b", "c")}
    return AnimllmConfig.model_validate({"models": models, "gpu": {"vram_gib": vram_gib}, "pool": pool})


def card(index: int, used: int) -> Gpu:
    return Gpu(index, "fake", f"GPU-{index}", "12.0", "blackwell", CARD, used, CARD - used)


def resident(model: str, gpus: tuple[int, ...], held: int, *, asleep: int | None = None) -> Resident:
    """A ready resident measured at `held` bytes on each of its GPUs (and at `asleep` once
    sent to sleep, when given). Placement never asks its engine."""
    share = Share(model, held / CARD, 0, "share")
    ready = Resident(model, SimpleNamespace(state=EngineLifecycle.READY), gpus, share,  # type: ignore[arg-type]
                     {g: held for g in gpus})
    ready.ready()
    if asleep is not None:
        ready.fall_asleep(1)
        ready.asleep_bytes = {g: asleep for g in gpus}
    return ready


def view(cfg: AnimllmConfig, residents: list[Resident], gpus: list[Gpu] | None = None,
         shares: dict[str, float] | None = None) -> PoolView:
    fractions = shares or {}
    return PoolView(cfg, {r.model: r for r in residents}, GpuReport(gpus=gpus or []),
                    lambda model, card_bytes: Share(model, fractions.get(model, 0.5), 0, "share"))


def test_a_model_goes_on_the_card_that_has_room_for_its_share() -> None:
    """a holds 10 GiB of GPU 0 (NVML counts it in `used`): b's 8 GiB fit only on GPU 1."""
    a = resident("a", (0,), 10 * GIB)
    two = [card(0, DESKTOP + 10 * GIB), card(1, DESKTOP)]
    now = view(config(), [a], two)
    rooms = [c.room_bytes for c in placement.cards(now)]
    assert rooms == [int(CARD * 0.95) - DESKTOP - 10 * GIB, int(CARD * 0.95) - DESKTOP]
    assert placement.place(now, "b") == (1,)
    assert placement.cards(now, evicting=frozenset({"a"}))[0].room_bytes == rooms[1]  # a's memory given back
    assert placement.place(view(config(gpus={"b": [0]}), [a], two), "b") is None   # it names the full card
    assert placement.place(view(config(gpus={"b": [0]}), [a], two), "b", frozenset({"a"})) == (0,)


def test_a_sleeper_keeps_a_little_of_the_card_and_wakes_where_it_sleeps() -> None:
    """Without NVML each card is gpu.vram_gib. Awake, a's 8 GiB leave no room for b's
    9.6 GiB; asleep it keeps 1 GiB, and b fits."""
    cfg = config(vram_gib=16)
    shares = {"b": 0.6}
    assert placement.place(view(cfg, [resident("a", (0,), 8 * GIB)], shares=shares), "b") is None
    asleep = view(cfg, [resident("a", (0,), 8 * GIB, asleep=GIB)], shares=shares)
    assert placement.cards(asleep)[0].room_bytes == int(CARD * 0.95) - GIB
    assert placement.place(asleep, "b") == (0,)
    # Placement may plan a's sleep ahead: `sleeping` counts it asleep already.
    awake = view(cfg, [resident("a", (0,), 8 * GIB)], shares=shares)
    assert placement.place(awake, "b", sleeping=frozenset({"a"})) == (0,)
    # Two empty cards; a sleeps on GPU 1, so it wakes there, though GPU 0 has as much room.
    on_one = view(config(), [resident("a", (1,), 8 * GIB, asleep=GIB)], [card(0, DESKTOP), card(1, DESKTOP + GIB)])
    assert placement.place(on_one, "a") == (1,)


def test_max_engines_counts_the_engines_awake() -> None:
    cfg = config(vram_gib=16, max_engines=1)
    shares = {"b": 0.2}
    assert placement.place(view(cfg, [resident("a", (0,), 2 * GIB)], shares=shares), "b") is None
    assert placement.place(view(cfg, [resident("a", (0,), 2 * GIB, asleep=GIB)], shares=shares), "b") == (0,)
    assert placement.place(view(cfg, [resident("a", (0,), 2 * GIB)], shares=shares), "b", frozenset({"a"})) == (0,)
    # The scheduler's question counts every sleeper as gone: it can always be stopped.
    assert placement.fits(view(cfg, [resident("a", (0,), 2 * GIB, asleep=GIB)], shares=shares), "b", frozenset())


def test_alone_a_model_may_always_try_and_without_a_card_size_only_alone() -> None:
    """vLLM's own check at start judges a model that the plan finds too big for an empty box."""
    assert placement.place(view(config(vram_gib=16), [], shares={"a": 1.2}), "a") == (0,)
    no_size = config()
    assert placement.cards(view(no_size, [])) is None
    assert placement.place(view(no_size, []), "a") == (0,)
    assert placement.place(view(no_size, [resident("b", (0,), GIB)]), "a") is None


def test_the_fewest_sleepers_stop_for_a_model_to_fit() -> None:
    """Each sleeper keeps 5 GiB: c's 8 GiB need one of the two gone, the first in line."""
    sleepers = [resident("a", (0,), 8 * GIB, asleep=5 * GIB), resident("b", (0,), 8 * GIB, asleep=5 * GIB)]
    now = view(config(vram_gib=16), sleepers)
    assert placement.place(now, "c") is None
    assert placement.sleepers_to_stop(now, "c", [], ["b", "a"], frozenset()) == ["b"]
    big = view(config(vram_gib=16), sleepers, shares={"c": 1.0})   # never fits beside anyone: all of them
    assert placement.sleepers_to_stop(big, "c", [], ["b", "a"], frozenset()) == ["b", "a"]


def test_a_switch_under_way_keeps_its_gpus_and_counts_as_an_engine() -> None:
    """a is being loaded onto GPU 1, its engine not launched yet: b goes on GPU 0 although
    GPU 1 has more room, not at all where it names GPU 1, nor beside c in a pool of two."""
    c = resident("c", (0,), 2 * GIB)
    two = [card(0, DESKTOP + 2 * GIB), card(1, DESKTOP)]
    assert placement.place(view(config(), [c], two), "b") == (1,)   # the most room, no switch under way
    now = replace(view(config(), [c], two), loading={"a": (1,)})
    assert placement.place(now, "b") == (0,)
    assert placement.place(now, "a") == (1,)                         # its own switch's GPUs are its own
    assert placement.place(replace(now, config=config(gpus={"b": [1]})), "b") is None
    assert placement.place(replace(now, config=config(max_engines=2)), "b") is None

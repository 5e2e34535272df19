"""Where a model's engine goes, and whether it fits: arithmetic over the config, the pool's
residents and NVML's latest report, with no I/O and no pool (the pool hands in a PoolView
and carries out the answer).

Fit is the planner's (gpu/planner.py: each model's share of a card, placed on the GPU with
room) against the cards as NVML shows them, other processes included; a resident counts
what it was measured to hold once ready, the plan's estimate before. Without NVML (the CPU
build) each card is `gpu.vram_gib` and each engine holds its share of it, so placement
decides the same way in the demo and the tests.

Switches may run at once (gateway/scheduler.py): the GPUs each switch under way loads onto
are its own until it ends (`PoolView.loading`), so that no other model is placed there
before that engine holds its memory, and its model counts as an engine against
`pool.max_engines` from the start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from animllm_cli.config.schema import AnimllmConfig
from animllm_cli.gateway.resident import Resident, ResidentState, sleepers
from animllm_cli.gpu.nvml import GpuReport
from animllm_cli.gpu.planner import Card, Share, place_share
from animllm_cli.units import GIB

NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PoolView:
    """What placement reads of the pool."""
    config: AnimllmConfig
    residents: Mapping[str, Resident]
    report: GpuReport
    share_of: Callable[[str, int], Share]  # a model's share of a card of this many bytes (the pool caches the planner's)
    loading: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # each switch under way: its model -> its GPUs


def cards(view: PoolView, evicting: frozenset[str] = NOTHING, sleeping: frozenset[str] = NOTHING) -> list[Card] | None:
    """Each GPU with the room left on it below the threshold once `evicting` is gone and
    `sleeping` asleep: NVML's free memory (every process counted) plus what those give
    back, and what dead engines still hold (the next switch stops them first), or,
    without NVML, `gpu.vram_gib` less what the residents will hold. None: no size known
    at all (one engine at a time, as before the pool)."""
    threshold = view.config.limits.vram_threshold
    holding = [r for r in view.residents.values() if r.holds()]

    def after(r: Resident, gpu: int) -> int:
        return 0 if r.model in evicting else r.asleep_on(gpu) if r.model in sleeping else r.holding(gpu)

    if view.report.gpus:
        return [Card(g.index, g.total_bytes, int(g.total_bytes * threshold) - g.used_bytes
                     + sum(r.holding(g.index) - after(r, g.index) for r in holding)
                     + sum(r.left_on(g.index) for r in view.residents.values()))
                for g in view.report.gpus]
    size = view.config.gpu.vram_gib
    if not size:
        return None
    total = int(size * GIB)
    return [Card(0, total, int(total * threshold) - sum(after(r, 0) for r in holding))]


def others(view: PoolView, model: str, evicting: frozenset[str]) -> list[str]:
    """The residents that would still hold memory beside `model` once `evicting` is gone."""
    return [m for m, r in view.residents.items() if r.holds() and m not in evicting and m != model]


def loading_beside(view: PoolView, model: str) -> list[str]:
    """The models other switches under way load (they are never `evicting`: the scheduler
    does not run two switches of which one evicts the other's model)."""
    return [m for m in view.loading if m != model]


def claimed(view: PoolView, model: str) -> frozenset[int]:
    """The GPUs the other switches under way load onto: `model` goes elsewhere meanwhile."""
    return frozenset(gpu for m in loading_beside(view, model) for gpu in view.loading[m])


def place(view: PoolView, model: str, evicting: frozenset[str] = NOTHING, found_cards: list[Card] | None = None,
          sleeping: frozenset[str] = NOTHING) -> tuple[int, ...] | None:
    """The GPUs `model` would run on once `evicting` is gone and `sleeping` asleep, or
    None if it does not fit. A sleeping model wakes where it sleeps (its own memory
    counted as given back), or else starts afresh where there is room. `max_engines`
    counts the engines awake: a sleeper gives its card back.
    `found_cards`: cards(view, evicting, sleeping), when the caller has them already."""
    resident = view.residents.get(model)
    asleep = resident is not None and resident.state is ResidentState.SLEEPING
    if asleep:
        evicting = evicting | {model}
    beside, loading = others(view, model, evicting), loading_beside(view, model)
    awake = {m for m in beside if m not in sleeping and view.residents[m].state is not ResidentState.SLEEPING}
    limit = view.config.pool.max_engines
    if limit is not None and len(awake | set(loading)) >= limit:
        return None
    found_cards = found_cards if found_cards is not None else cards(view, evicting, sleeping)
    if found_cards is None:
        return None if beside or loading else (0,)
    taken = claimed(view, model)
    found_cards = [c for c in found_cards if c.index not in taken]
    wanted = view.config.models[model].gpus
    if not found_cards or taken & set(wanted or ()):
        return None

    def share_on(card: Card) -> Share:
        return view.share_of(model, card.total_bytes)

    found = place_share(share_on, found_cards, list(resident.gpus)) if asleep else None
    found = found or place_share(share_on, found_cards, wanted)
    if found is None and not beside and not loading:
        # Alone on the box it may always try: vLLM's own check at start is the judge,
        # as it was before the pool (a plan that is too cautious must not lock a model out).
        tp = share_on(found_cards[0]).tensor_parallel
        found = tuple(wanted) if wanted else tuple(c.index for c in sorted(found_cards, key=lambda c: -c.room_bytes)[:tp])
    return found


def fits(view: PoolView, model: str, evicting: frozenset[str]) -> tuple[int, ...] | None:
    """Where `model` goes once `evicting` is gone, None if it does not fit: the scheduler's
    question. A sleeper can always be stopped, so the sleepers count as gone too (one that a
    switch under way wakes sleeps on GPUs that switch holds: `model` goes elsewhere)."""
    return place(view, model, evicting | frozenset(sleepers(view.residents.values())))


def sleepers_to_stop(view: PoolView, model: str, stopping: list[str], spare: list[str],
                     sleeping: frozenset[str]) -> list[str]:
    """The fewest of `spare` (the sleepers, in the order they should go) to stop beside
    `stopping` for `model` to fit with `sleeping` asleep; all of them if even that is short."""
    for count in range(len(spare) + 1):
        if place(view, model, frozenset([*stopping, *spare[:count]]), sleeping=sleeping - set(spare[:count])) is not None:
            return spare[:count]
    return spare

"""The engines the gateway owns: every model that fits stays loaded.

Fit is the planner's arithmetic (gpu/planner.py: each model's share of a card, placed on
the GPU with room) against the cards as NVML shows them now, other processes included;
once an engine is ready its measured footprint (NVML per process) replaces the estimate.
Without NVML (the CPU build) each card is `gpu.vram_gib` and each engine holds its share
of it, so the pool decides the same way in the demo and the tests.

The pool carries out what the scheduler decides (gateway/scheduler.py): a switch stops the
residents it evicts, waits for their VRAM, starts the model on its GPUs and waits for
ready; it restarts a dead engine only within a bound, reports timings, and names the
engine processes it runs (for the state file). A closing pool starts nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from animllm_cli.config import LoadedConfig
from animllm_cli.engine.supervisor import Engine, Progress, State, StopReport, launch
from animllm_cli.gateway.admission import engine_bytes
from animllm_cli.gateway.scheduler import Decision
from animllm_cli.gateway.state import EngineGroup, EngineStatus, SwitchReport
from animllm_cli.gpu import nvml
from animllm_cli.gpu.planner import Card, Share, card_shares, place_share
from animllm_cli.units import GIB


SWITCH_HISTORY = 100
log = logging.getLogger(__name__)


class EngineGaveUp(Exception):
    pass


class PoolClosing(Exception):
    """The gateway is stopping: no engine is started any more."""


class NoRoom(Exception):
    """The plan has no room for the model now (the scheduler evicts first, so this means
    the card changed under it: another process took memory)."""


@dataclass(eq=False)
class Resident:
    """One engine of the pool, from its launch until it is stopped."""
    model: str
    engine: Engine
    gpus: tuple[int, ...]
    share: Share
    planned_bytes: dict[int, int]              # GPU -> the plan's footprint
    measured_bytes: dict[int, int] = field(default_factory=dict)  # GPU -> NVML's, once ready
    peak_bytes: dict[int, int] = field(default_factory=dict)      # GPU -> the most NVML showed
    ready_bytes: dict[int, int] | None = None  # GPU -> what it held when it became ready (admission)
    loaded_at: float | None = None             # wall clock, when it became ready
    stopping: bool = False

    @property
    def state(self) -> str:
        """starting | ready | stopping | dead | stopped."""
        return "stopping" if self.stopping else self.engine.state.value

    def bytes_on(self, gpu: int) -> int:
        """What it holds on `gpu`: measured once ready, the plan's estimate before."""
        return self.measured_bytes.get(gpu) or self.planned_bytes.get(gpu, 0)

    def holds(self) -> bool:
        return self.state in ("starting", "ready", "stopping")


class EnginePool:
    def __init__(self, loaded: LoadedConfig, *, log_dir: Path | None = None, nvml_module: object | None = None,
                 on_progress: Callable[[Progress], None] | None = None,
                 on_death: Callable[[str, str], None] | None = None,
                 on_engines_changed: Callable[[], None] | None = None,
                 max_restarts: int = 3, restart_window_s: float = 600.0) -> None:
        self.loaded = loaded
        self.log_dir = log_dir
        self.nvml_module = nvml_module
        self.on_progress = on_progress
        self.on_death = on_death
        self.on_engines_changed = on_engines_changed
        self.residents: dict[str, Resident] = {}
        self.last_switch: SwitchReport | None = None
        self.switches: list[SwitchReport] = []      # the latest SWITCH_HISTORY, oldest first
        self.report = nvml.GpuReport(error="not read yet")  # NVML's latest answer (refresh())
        self.max_restarts, self.restart_window_s = max_restarts, restart_window_s
        self._deaths: dict[str, list[float]] = {}
        self._shares: dict[int, dict[str, Share]] = {}  # card size -> each model's share of it
        self._loop: asyncio.AbstractEventLoop | None = None
        # Every engine launched and not yet confirmed stopped, including one being replaced
        # or shut down: what a dead gateway would leave behind.
        self._running: list[Engine] = []
        self._closing = False

    # ------------------------------------------------------------------ what is loaded
    @property
    def models(self) -> list[str]:
        """The models whose engines are ready: the scheduler's residents."""
        return [m for m, r in self.residents.items() if r.state == "ready"]

    @property
    def newest(self) -> str | None:
        """The model launched last (residents are kept in launch order)."""
        return next(reversed(self.residents), None)

    @property
    def model(self) -> str | None:
        """The model loaded last, if it is ready (the single-slot view of scripts)."""
        return self.newest if self.newest in self.models else None

    @property
    def engine(self) -> Engine | None:
        """The engine of the model loaded last, whatever its state."""
        resident = self.residents.get(self.newest or "")
        return resident.engine if resident else None

    def engine_for(self, model: str) -> Engine | None:
        resident = self.residents.get(model)
        return resident.engine if resident and resident.state == "ready" else None

    def pinned(self, model: str) -> bool:
        return self.loaded.config.models[model].pin

    def keep_alive(self, model: str) -> float:
        own = self.loaded.config.models[model].keep_alive
        return self.loaded.config.pool.keep_alive if own is None else own

    # ------------------------------------------------------------------ the plan
    def share(self, model: str, card_bytes: int) -> Share:
        if card_bytes not in self._shares:
            self._shares[card_bytes] = card_shares(self.loaded, card_bytes)
        return self._shares[card_bytes][model]

    def cards(self, evicting: frozenset[str] = frozenset()) -> list[Card] | None:
        """Each GPU with the room left on it below the threshold once `evicting` is gone:
        NVML's free memory (every process counted) plus what the evicted hold, or,
        without NVML, `gpu.vram_gib` less what the other residents hold. None: no size
        known at all (one engine at a time, as before the pool)."""
        threshold = self.loaded.config.limits.vram_threshold
        holding = [r for r in self.residents.values() if r.holds()]
        if self.report.gpus:
            return [Card(g.index, g.total_bytes, int(g.total_bytes * threshold) - g.used_bytes
                         + sum(r.bytes_on(g.index) for r in holding if r.model in evicting))
                    for g in self.report.gpus]
        size = self.loaded.config.gpu.vram_gib
        if not size:
            return None
        total = int(size * GIB)
        return [Card(0, total, int(total * threshold) - sum(r.bytes_on(0) for r in holding if r.model not in evicting))]

    def _others(self, model: str, evicting: frozenset[str]) -> list[str]:
        """The residents that would still hold memory beside `model` once `evicting` is gone."""
        return [m for m, r in self.residents.items() if r.holds() and m not in evicting and m != model]

    def place(self, model: str, evicting: frozenset[str] = frozenset(),
              cards: list[Card] | None = None) -> tuple[int, ...] | None:
        """The GPUs `model` would run on once `evicting` is gone, or None if it does not fit.
        `cards`: self.cards(evicting), when the caller has it already."""
        others = self._others(model, evicting)
        limit = self.loaded.config.pool.max_engines
        if limit is not None and len(others) >= limit:
            return None
        cards = cards if cards is not None else self.cards(evicting)
        if cards is None:
            return None if others else (0,)
        spec = self.loaded.config.models[model]
        found = place_share(lambda card: self.share(model, card.total_bytes), cards, spec.gpus)
        if found is None and not others:
            # Alone on the box it may always try: vLLM's own check at start is the judge,
            # as it was before the pool (a plan that is too cautious must not lock a model out).
            tp = self.share(model, cards[0].total_bytes).tensor_parallel
            found = tuple(spec.gpus) if spec.gpus else tuple(c.index for c in
                                                             sorted(cards, key=lambda c: -c.room_bytes)[:tp])
        return found

    def fits(self, model: str, evicting: frozenset[str]) -> bool:
        """For the scheduler, on the event loop: it must not raise. Should the plan fail
        (a model's files unreadable, say), the model fits only alone, as before the pool."""
        try:
            return self.place(model, evicting) is not None
        except Exception:  # noqa: BLE001 - logged, and the switch's own launch reports it
            log.exception("placing %s failed; treating it as one engine at a time", model)
            return not self._others(model, evicting)

    def refresh(self) -> nvml.GpuReport:
        """Read NVML (blocking: call it in a thread) and take each ready engine's footprint
        from it: what its processes hold now, and the most they ever held."""
        report = nvml.probe(self.nvml_module)
        for resident in list(self.residents.values()):
            if resident.state != "ready":
                continue
            pids = resident.engine.pids()
            for gpu in report.gpus:
                held = engine_bytes(gpu, pids)
                if held:
                    resident.measured_bytes[gpu.index] = held
                    resident.peak_bytes[gpu.index] = max(held, resident.peak_bytes.get(gpu.index, 0))
        self.report = report
        return report

    # ------------------------------------------------------------------ switches
    async def switch(self, decision: Decision) -> SwitchReport:
        """Stop the residents `decision.evict` names (and any dead engine), wait for their
        VRAM, then start `decision.model` (if any) where the plan puts it, and wait for ready."""
        self._loop = asyncio.get_running_loop()
        model = decision.model
        started = time.monotonic()
        report = SwitchReport(from_model=decision.evict[0] if decision.evict else None, to_model=model,
                              evicted=list(decision.evict), outcome="failed", reason=decision.reason,
                              chosen_by=decision.chosen_by)
        engine: Engine | None = None
        try:
            if model is not None:
                self._refuse_if_closing(model)
                self._check_restarts(model)
            stopped = await self._evict([*decision.evict, *(m for m, r in self.residents.items()
                                                            if r.state in ("dead", "stopped") or m == model)])
            if stopped:
                report.stop_s = max(s.stop_s for s in stopped)
                releases = [s.vram_release_s for s in stopped if s.vram_release_s is not None]
                report.vram_release_s = max(releases) if releases else None
                report.vram_note = "; ".join(dict.fromkeys(s.vram_note for s in stopped))
            await asyncio.to_thread(self.refresh)
            report.vram_free_before = self._free()
            if model is None:
                report.outcome = "ok"
                return report
            self._refuse_if_closing(model)  # shutdown may have begun while the others stopped
            engine = self._launch(model)
            ready = await asyncio.to_thread(engine.start)
            self._refuse_if_closing(model)  # shutdown stopped it just as it became ready
            self.residents[model].loaded_at = time.time()
            report.load_s = round(ready.ready_s, 3)
            await asyncio.to_thread(self.refresh)
            report.vram_free_after = self._free()
            self._reserve(self.residents[model], report)
            report.gpus = list(self.residents[model].gpus)
            report.outcome = "ok"
            return report
        except Exception as exc:
            report.error = getattr(exc, "reason", None) or str(exc)
            if engine is not None and engine.state is State.STOPPED:  # a failed start stops what it launched
                self._forget(engine)
                if model is not None and self.residents.get(model, None) and self.residents[model].engine is engine:
                    del self.residents[model]
            raise
        finally:
            report.total_s = round(time.monotonic() - started, 3)
            report.finished_at = time.time()
            self.last_switch = report
            self.switches = [*self.switches[-SWITCH_HISTORY + 1:], report]

    def _launch(self, model: str) -> Engine:
        found = self.cards()
        cards = {c.index: c for c in found or [Card(0, 0, 0)]}
        named = self.loaded.config.models[model].gpus or []
        if set(named) - set(cards):
            raise NoRoom(f"models.{model}.gpus names GPU {', '.join(str(g) for g in named if g not in cards)}, "
                         f"which this machine does not have (GPUs: {', '.join(map(str, cards))})")
        gpus = self.place(model, cards=found)
        if gpus is None:
            free = ", ".join(f"GPU {c.index}: {c.room_bytes / GIB:.1f} GiB" for c in found or [])
            raise NoRoom(f"no room for '{model}' now ({free or 'no card size known'} below the threshold); "
                         f"see `animllm plan --together`")
        share = self.share(model, cards[gpus[0]].total_bytes) if cards[gpus[0]].total_bytes else None
        engine = launch(self.loaded, model, on_progress=self.on_progress, on_dead=self._engine_died,
                        log_dir=self.log_dir, nvml_module=self.nvml_module, on_launched=self._track,
                        gpus=gpus if self.report.gpus else None,
                        utilization=share.utilization if share and share.basis != "alone" else None)
        planned = {g: share.bytes_on(cards[g].total_bytes) for g in gpus} if share else {}
        self.residents.pop(model, None)
        self.residents[model] = Resident(model, engine, gpus, share or Share(model, 0, 0, "alone"), planned)
        return engine

    def _reserve(self, resident: Resident, report: SwitchReport) -> None:
        """What the new engine holds at ready, for admission. Where the driver names no
        process of it (containers see host pids, Windows/WSL show no per-process memory),
        what its start took from free memory on its first GPU stands in."""
        pids = resident.engine.pids()
        resident.ready_bytes = {g.index: engine_bytes(g, pids) for g in self.report.gpus}
        before, after = report.vram_free_before, report.vram_free_after
        if before is not None and after is not None and not any(resident.ready_bytes.values()):
            resident.ready_bytes[resident.gpus[0]] = max(0, before - after)

    def reserved(self) -> dict[int, int] | None:
        """GPU -> what the ready engines held when they became ready; None while one is unmeasured."""
        total: dict[int, int] = {}
        for resident in self.residents.values():
            if resident.state != "ready":
                continue
            if resident.ready_bytes is None:
                return None
            for gpu, held in resident.ready_bytes.items():
                total[gpu] = total.get(gpu, 0) + held
        return total

    def _free(self) -> int | None:
        return self.report.gpus[0].free_bytes if self.report.gpus else None

    async def _evict(self, models: list[str]) -> list[StopReport]:
        """Stop these residents at once (each stop waits for its VRAM), and forget them."""
        leaving = [self.residents[m] for m in dict.fromkeys(models) if m in self.residents]
        for resident in leaving:
            resident.stopping = True
        try:
            stopped = await asyncio.gather(*(asyncio.to_thread(r.engine.stop) for r in leaving),
                                           return_exceptions=True)
        finally:  # even a stop that raised leaves the pool: its room must not stay taken
            for resident in leaving:
                if self.residents.get(resident.model) is resident:
                    del self.residents[resident.model]
                self._forget(resident.engine)
        failed = [s for s in stopped if isinstance(s, BaseException)]
        if failed:
            raise failed[0]
        return [s for s in stopped if s.stop_s or s.left]

    def _check_restarts(self, model: str) -> None:
        recent = [t for t in self._deaths.get(model, []) if time.monotonic() - t < self.restart_window_s]
        self._deaths[model] = recent
        if len(recent) > self.max_restarts:
            raise EngineGaveUp(f"the engine for '{model}' died {len(recent)} times in "
                               f"{self.restart_window_s:.0f}s; not restarting it (see `animllm logs`)")

    def _engine_died(self, engine: Engine, reason: str) -> None:
        """Called from the engine's watcher thread."""
        self._deaths.setdefault(engine.model, []).append(time.monotonic())
        if self.on_death and self._loop:
            self._loop.call_soon_threadsafe(self.on_death, engine.model, reason)

    def _refuse_if_closing(self, model: str) -> None:
        if self._closing:
            raise PoolClosing(f"the gateway is stopping: not starting '{model}'")

    def _track(self, engine: Engine) -> None:
        """Called from the starting thread as soon as the engine's process exists."""
        self._running.append(engine)
        self._engines_changed()

    def _forget(self, engine: Engine) -> None:
        if engine in self._running:
            self._running.remove(engine)
            self._engines_changed()

    def _engines_changed(self) -> None:
        if self.on_engines_changed:
            self.on_engines_changed()

    def engine_groups(self) -> list[EngineGroup]:
        """The engine processes this gateway runs: for the state file."""
        return [EngineGroup(e.model, e.pid, e.created_at, e.module, e.watchdog_pid)
                for e in list(self._running) if e.pid is not None]

    def all_pids(self) -> set[int]:
        return {pid for r in list(self.residents.values()) for pid in r.engine.pids()}

    async def shutdown(self) -> StopReport | None:
        """Start nothing more, and stop every engine at once, even one that is still
        starting (its start then fails at once) or that a switch is about to replace.
        Returns the slowest stop (the one the user waited for)."""
        self._closing = True
        stopped = await self._evict(list(self.residents))
        left = sorted(pid for s in stopped for pid in s.left)
        if not stopped:
            return None
        slowest = max(stopped, key=lambda s: s.stop_s)
        return StopReport(", ".join(s.model for s in stopped), slowest.stop_s, any(s.forced for s in stopped), left,
                          slowest.vram_release_s, slowest.vram_note)

    # ------------------------------------------------------------------ status
    def status(self, resident: Resident, *, running: int, waiting: int, idle_s: float | None) -> EngineStatus:
        """One engine's part of `/admin/status` and `animllm ps`. `running`, `waiting` and
        `idle_s` (how long it has had neither) are the scheduler's."""
        engine, model = resident.engine, resident.model
        keep, pinned = self.keep_alive(model), self.pinned(model)
        expires = keep >= 0 and not pinned and idle_s is not None and resident.state == "ready"
        return EngineStatus(
            model=model, state=resident.state, phase=engine.phase, engine_pid=engine.pid,
            engine_url=engine.base_url, death_reason=engine.death_reason, log_path=str(engine.log_path),
            loaded_since=resident.loaded_at if resident.state == "ready" else None,
            gpus=list(resident.gpus), share=resident.share.utilization or None,
            vram_bytes=sum(resident.measured_bytes.values()) or None,
            vram_planned_bytes=sum(resident.planned_bytes.values()) or None,
            vram_peak_bytes=sum(resident.peak_bytes.values()) or None,
            in_flight=running, waiting=waiting, idle_s=idle_s, pinned=pinned, keep_alive_s=keep,
            unload_in_s=round(max(0.0, keep - (idle_s or 0)), 1) if expires else None)

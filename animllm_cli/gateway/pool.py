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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from animllm_cli.config import LoadedConfig
from animllm_cli.engine.python_env import PythonEnv
from animllm_cli.engine import sleep
from animllm_cli.engine.sleep import ASLEEP_ESTIMATE_BYTES
from animllm_cli.engine.supervisor import Engine, Progress, State, StopReport, launch
from animllm_cli.gateway.admission import engine_bytes
from animllm_cli.gateway.scheduler import Decision
from animllm_cli.runfile import EngineGroup
from animllm_cli.wire import EngineStatus, SleepModeStatus, SwitchReport
from animllm_cli.gpu import nvml
from animllm_cli.gpu.planner import Card, Share, card_shares, model_quantization, place_share
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
    asleep: int | None = None                  # its sleep level, from the moment it is sent to sleep
    waking: bool = False
    sleep_mode: bool = False                   # launched able to sleep
    asleep_bytes: dict[int, int] = field(default_factory=dict)  # GPU -> NVML's, while asleep
    host_bytes: int = 0                        # its weights in host RAM (level 1)
    host_seen: int = 0                         # how much of that host RAM's `available` showed gone
    host_kept: int = 0                         # host RAM it kept after a wake (vllm#16663)
    asleep_since: float | None = None          # monotonic

    @property
    def state(self) -> str:
        """starting | ready | sleeping | waking | stopping | dead | stopped."""
        if self.stopping or self.engine.state.value != "ready":
            return "stopping" if self.stopping else self.engine.state.value
        return "waking" if self.waking else "sleeping" if self.asleep else "ready"

    def bytes_on(self, gpu: int) -> int:
        """What it holds on `gpu` awake: measured once ready, the plan's estimate before."""
        return self.measured_bytes.get(gpu) or self.planned_bytes.get(gpu, 0)

    def asleep_on(self, gpu: int) -> int:
        """What it holds on `gpu` asleep (a CUDA context and buffers): measured, else an estimate."""
        return self.asleep_bytes.get(gpu) or (ASLEEP_ESTIMATE_BYTES if gpu in self.gpus else 0)

    def holding(self, gpu: int) -> int:
        return self.asleep_on(gpu) if self.asleep and not self.waking else self.bytes_on(gpu)

    def holds(self) -> bool:
        return self.state in ("starting", "ready", "sleeping", "waking", "stopping")


class EnginePool:
    def __init__(self, loaded: LoadedConfig, *, log_dir: Path | None = None, nvml_module: object | None = None,
                 on_progress: Callable[[Progress], None] | None = None,
                 on_death: Callable[[str, str], None] | None = None,
                 on_engines_changed: Callable[[], None] | None = None,
                 max_restarts: int = 3, restart_window_s: float = 600.0,
                 engine_env: PythonEnv | None = None, host_available: Callable[[], int] | None = None) -> None:
        """`engine_env`: what the engine's Python has installed (whether its vLLM can sleep);
        `host_available`: the host RAM free now (psutil's `available`; tests pass their own)."""
        self.loaded = loaded
        self.engine_env = engine_env
        self.host_available = host_available or (lambda: psutil.virtual_memory().available)
        self.log_dir = log_dir
        self.nvml_module = nvml_module
        self.on_progress = on_progress
        self.on_death = on_death
        self.on_engines_changed = on_engines_changed
        self.residents: dict[str, Resident] = {}
        self.last_switch: SwitchReport | None = None
        self.switches: list[SwitchReport] = []      # the latest SWITCH_HISTORY, oldest first
        self.switches_recorded = 0                  # ever: says how many fell out of `switches`
        self.report = nvml.GpuReport(error="not read yet")  # NVML's latest answer (refresh())
        self.max_restarts, self.restart_window_s = max_restarts, restart_window_s
        self._deaths: dict[str, list[float]] = {}
        self._shares: dict[int, dict[str, Share]] = {}  # card size -> each model's share of it
        self._loop: asyncio.AbstractEventLoop | None = None
        # Every engine launched and not yet confirmed stopped, including one being replaced
        # or shut down: what a dead gateway would leave behind.
        self._running: list[Engine] = []
        self._closing = False
        self._refreshing = threading.Lock()  # the sampler's and a switch's NVML readings, one at a time

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

    @property
    def sleepers(self) -> list[str]:
        """The models asleep, the longest asleep first."""
        asleep = [r for r in self.residents.values() if r.state == "sleeping"]
        return [r.model for r in sorted(asleep, key=lambda r: r.asleep_since or 0.0)]

    @property
    def asleep(self) -> list[str]:
        """The models asleep or waking up (a request for one waits for its wake)."""
        return [m for m, r in self.residents.items() if r.asleep and r.state in ("sleeping", "waking")]

    @property
    def support(self) -> sleep.Support:
        """Whether engines here can sleep (the engine's vLLM build, NVML's GPUs)."""
        if self.engine_env is None:
            return sleep.Support(False, "the engine's Python was not probed")
        return sleep.platform_support(self.engine_env, self.report)

    def sleep_status(self) -> SleepModeStatus:
        support = self.support
        return SleepModeStatus(available=support.available, reason=support.reason,
                               host_available_bytes=self.host_available() if support.available else None)

    def sleep_mode(self, model: str) -> bool:
        """Whether `model`'s engine is launched able to sleep: not `off`, a platform that
        can, and under `auto` no known-bad entry against sleep mode for it."""
        setting, support = self.loaded.config.models[model].sleep, self.support
        if setting == "off" or not support.available:
            return False
        quantization = model_quantization(self.loaded, model)  # the checkpoint's own too: NVFP4 says modelopt
        return setting != "auto" or sleep.avoided(support.vllm_version, None, quantization) is None


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

    def cards(self, evicting: frozenset[str] = frozenset(), sleeping: frozenset[str] = frozenset()) -> list[Card] | None:
        """Each GPU with the room left on it below the threshold once `evicting` is gone and
        `sleeping` asleep: NVML's free memory (every process counted) plus what those give
        back, or, without NVML, `gpu.vram_gib` less what the residents will hold. None: no
        size known at all (one engine at a time, as before the pool)."""
        threshold = self.loaded.config.limits.vram_threshold
        holding = [r for r in self.residents.values() if r.holds()]

        def after(r: Resident, gpu: int) -> int:
            return 0 if r.model in evicting else r.asleep_on(gpu) if r.model in sleeping else r.holding(gpu)

        if self.report.gpus:
            return [Card(g.index, g.total_bytes, int(g.total_bytes * threshold) - g.used_bytes
                         + sum(r.holding(g.index) - after(r, g.index) for r in holding))
                    for g in self.report.gpus]
        size = self.loaded.config.gpu.vram_gib
        if not size:
            return None
        total = int(size * GIB)
        return [Card(0, total, int(total * threshold) - sum(after(r, 0) for r in holding))]

    def _others(self, model: str, evicting: frozenset[str]) -> list[str]:
        """The residents that would still hold memory beside `model` once `evicting` is gone."""
        return [m for m, r in self.residents.items() if r.holds() and m not in evicting and m != model]

    def place(self, model: str, evicting: frozenset[str] = frozenset(), cards: list[Card] | None = None,
              sleeping: frozenset[str] = frozenset()) -> tuple[int, ...] | None:
        """The GPUs `model` would run on once `evicting` is gone and `sleeping` asleep, or
        None if it does not fit. A sleeping model wakes where it sleeps (its own memory
        counted as given back), or else starts afresh where there is room.
        `cards`: self.cards(evicting, sleeping), when the caller has it already."""
        resident = self.residents.get(model)
        if resident is not None and resident.state == "sleeping":
            evicting = evicting | {model}
        others = self._others(model, evicting)
        awake = [m for m in others if m not in sleeping and self.residents[m].state != "sleeping"]
        limit = self.loaded.config.pool.max_engines  # engines awake: sleepers give the card back
        if limit is not None and len(awake) >= limit:
            return None
        cards = cards if cards is not None else self.cards(evicting, sleeping)
        if cards is None:
            return None if others else (0,)
        spec = self.loaded.config.models[model]
        share_on = lambda card: self.share(model, card.total_bytes)  # noqa: E731
        found = None
        if resident is not None and resident.state == "sleeping":
            found = place_share(share_on, cards, list(resident.gpus))
        found = found or place_share(share_on, cards, spec.gpus)
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
        try:  # a sleeper can always be stopped
            return self.place(model, evicting | frozenset(self.sleepers)) is not None
        except Exception:  # noqa: BLE001 - logged, and the switch's own launch reports it
            log.exception("placing %s failed; treating it as one engine at a time", model)
            return not self._others(model, evicting)

    def refresh(self) -> nvml.GpuReport:
        """Read NVML (blocking: call it in a thread) and take each ready engine's footprint
        from it: what its processes hold now, and the most they ever held."""
        with self._refreshing:
            return self._refresh()

    def _refresh(self) -> nvml.GpuReport:
        report = nvml.probe(self.nvml_module)
        for resident in list(self.residents.values()):
            if resident.state not in ("ready", "sleeping"):
                continue
            pids = resident.engine.pids()
            for gpu in report.gpus:
                held = engine_bytes(gpu, pids)
                if held and resident.state == "sleeping":
                    resident.asleep_bytes[gpu.index] = held
                elif held:
                    resident.measured_bytes[gpu.index] = held
                    resident.peak_bytes[gpu.index] = max(held, resident.peak_bytes.get(gpu.index, 0))
        self.report = report
        return report

    # ------------------------------------------------------------------ switches
    async def switch(self, decision: Decision) -> SwitchReport:
        """Make room: send the residents `decision.evict` names to sleep where they may and
        the card has room for `decision.model` beside the sleepers, else stop them (and any
        dead engine, and the sleepers the card cannot keep); then wake `decision.model`
        where it sleeps, or start it where the plan puts it, and wait for ready."""
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
            asleep, stop = self._leaving(model, decision, report)
            dead = [m for m, r in self.residents.items()
                    if r.state in ("dead", "stopped") or (m == model and r.state != "sleeping")]
            stopped, slept = await asyncio.gather(self._evict([*stop, *dead]), self._sleep(asleep, report),
                                                  return_exceptions=True)  # neither left running on a failure
            failures = [o for o in (stopped, slept) if isinstance(o, BaseException)]
            for extra in failures[1:]:
                log.error("making room for %s also failed", model, exc_info=extra)
            if failures:
                raise failures[0]
            self._note_stops(stopped, report)
            await asyncio.to_thread(self.refresh)
            if model is not None:
                await self._stop_sleepers_short_of(model, report)
            report.vram_free_before = self._free()
            if model is None:
                report.outcome = "ok"
                return report
            self._refuse_if_closing(model)  # shutdown may have begun while the others stopped
            if not await self._wake(model, report):
                self._refuse_if_closing(model)  # shutdown may have stopped it during the wake
                engine = self._launch(model)
                ready = await asyncio.to_thread(engine.start)
                report.load_s, report.load_kind = round(ready.ready_s, 3), "cold"
            self._refuse_if_closing(model)  # shutdown stopped it just as it became ready
            self.residents[model].loaded_at = time.time()
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
            self.switches_recorded += 1

    @staticmethod
    def _note_stops(stopped: list[StopReport], report: SwitchReport) -> None:
        if stopped:
            report.stop_s = max(s.stop_s for s in stopped)
            releases = [s.vram_release_s for s in stopped if s.vram_release_s is not None]
            report.vram_release_s = max(releases) if releases else None
            report.vram_note = "; ".join(dict.fromkeys(s.vram_note for s in stopped))

    # ------------------------------------------------------------------ sleep
    def host_room(self) -> int:
        """Host RAM a level-1 sleeper may take now: what is available less the margin, less
        what the sleepers hold that `available` does not show yet."""
        margin = int(self.loaded.config.pool.sleep_ram_margin_gib * GIB)
        unseen = sum(max(0, r.host_bytes - r.host_seen) for r in self.residents.values() if r.state == "sleeping")
        return self.host_available() - margin - unseen

    def sleep_choice(self, model: str, host_room: int) -> sleep.Choice:
        resident = self.residents[model]
        setting, quantization = self.loaded.config.models[model].sleep, model_quantization(self.loaded, model)
        if not resident.sleep_mode:
            bad = sleep.avoided(self.support.vllm_version, None, quantization)
            reason = "sleep: off" if setting == "off" else f"cannot sleep here: {self.support.reason}" \
                if not self.support.available else f"not launched able to sleep ({bad.issue}: {bad.summary})" \
                if bad else "not launched able to sleep"
            return sleep.Choice(None, reason)
        return sleep.choose_level(setting, self.support, resident.share.weight_bytes, host_room, quantization)

    def _leaving(self, model: str | None, decision: Decision, report: SwitchReport) -> tuple[dict[str, int], list[str]]:
        """How each evicted model leaves the card: asleep (model -> level) or stopped; and
        the sleepers that must stop too for `model` to fit. An unload always stops."""
        victims = [v for v in decision.evict if v in self.residents]
        levels: dict[str, int] = {}
        room = self.host_room()
        for victim in victims if decision.reason != "unload" else []:
            choice = self.sleep_choice(victim, room)
            if choice.level:
                levels[victim] = choice.level
                room -= (self.residents[victim].share.weight_bytes or 0) if choice.level == 1 else 0
            elif self.residents[victim].sleep_mode or decision.reason == "sleep":
                report.notes.append(f"{victim}: stopped, not sent to sleep: {choice.why}")
        gone = [v for v in victims if v not in levels]
        if model is None:
            return levels, gone
        # Should the card be short with the sleepers' leftovers, the longest asleep stop first.
        spare = [*(m for m in self.sleepers if m != model), *reversed(list(levels))]
        for count in range(len(spare) + 1):
            stopping = [*gone, *spare[:count]]
            if self.place(model, frozenset(stopping), sleeping=frozenset(levels) - set(stopping)) is not None:
                break
        for sleeper in stopping[len(gone):]:
            report.notes.append(f"{sleeper}: stopped, not kept asleep: the card has no room for '{model}' beside it")
        return {v: level for v, level in levels.items() if v not in stopping}, stopping

    async def _sleep(self, levels: dict[str, int], report: SwitchReport) -> None:
        """Send these residents to sleep at once; one that fails to sleep is stopped."""
        going = [self.residents[m] for m in levels]
        if not going:
            return
        for resident in going:
            resident.asleep, resident.asleep_since = levels[resident.model], time.monotonic()
            resident.asleep_bytes = {}
        before = self.host_available()
        timeout = self.loaded.config.engine.start_timeout_s
        results = await asyncio.gather(*(asyncio.to_thread(sleep.put_to_sleep, r.engine, r.asleep, timeout)
                                         for r in going), return_exceptions=True)
        shown_gone = max(0, before - self.host_available())
        failed = []
        for resident, result in zip(going, results):
            if isinstance(result, BaseException):
                failed.append(resident.model)
                report.notes.append(f"{resident.model}: stopped, its sleep failed: {result}")
                continue
            report.sleep_s = round(max(report.sleep_s or 0.0, result), 3)
            report.slept.append(resident.model)
            resident.host_bytes = (resident.share.weight_bytes or 0) if resident.asleep == 1 else 0
            # A sample taken while it fell asleep is not what it keeps asleep. Under the
            # refresh lock, taken in a thread: a refresh in progress must not block the loop.
            await asyncio.to_thread(self._forget_asleep_bytes, resident)
        slept = [r for r in going if r.model not in failed]
        # How much of their host RAM `available` shows gone: an engine woken before keeps that
        # memory (vllm#16663), so only the rest can have gone now, shared out in proportion.
        new = {r.model: max(0, r.host_bytes - r.host_kept) for r in slept}
        for resident in slept:
            shown = shown_gone * new[resident.model] // sum(new.values()) if sum(new.values()) else 0
            resident.host_seen = min(resident.host_bytes, resident.host_kept + shown)
        if failed:
            self._note_stops(await self._evict(failed), report)

    def _forget_asleep_bytes(self, resident: Resident) -> None:
        with self._refreshing:
            resident.asleep_bytes = {}

    async def _stop_sleepers_short_of(self, model: str, report: SwitchReport) -> None:
        """Now that NVML has measured the sleepers: if the card is still short for
        `model`, stop them, the longest asleep first."""
        if self.place(model) is not None or self.place(model, frozenset(self.sleepers) - {model}) is None:
            return  # it fits as it is, or stopping every sleeper would not make it fit either
        while self.place(model) is None:
            spare = [m for m in self.sleepers if m != model]
            if not spare:
                return
            report.notes.append(f"{spare[0]}: stopped, not kept asleep: the card has no room for '{model}' beside "
                                f"it (measured)")
            if spare[0] in report.slept:
                report.slept.remove(spare[0])
                report.sleep_s = report.sleep_s if report.slept else None
            self._note_stops(await self._evict(spare[:1]), report)
            await asyncio.to_thread(self.refresh)

    async def _wake(self, model: str, report: SwitchReport) -> bool:
        """Wake `model` where it sleeps, if it sleeps and fits there. False: it must start
        cold (a wake that failed is stopped first, and its diagnosis reported)."""
        resident = self.residents.get(model)
        if resident is None or resident.state != "sleeping":
            return False
        if self.place(model) != resident.gpus:  # no room where it sleeps: start it where there is
            report.notes.append(f"{model}: stopped and started cold: no room on GPU "
                                f"{', '.join(map(str, resident.gpus))} where it slept")
            self._note_stops(await self._evict([model]), report)
            return False
        resident.waking = True
        try:
            woke = await asyncio.to_thread(sleep.wake, resident.engine, resident.asleep,
                                           self.loaded.config.engine.start_timeout_s)
        except sleep.SleepError as exc:
            report.wake_error = resident.engine.explain(f"its wake from level {resident.asleep} failed: {exc}")
            self._note_stops(await self._evict([model]), report)
            return False
        finally:
            resident.waking = False
        report.wake_s, report.load_kind, report.wake_level = round(woke, 3), "wake", resident.asleep
        resident.asleep, resident.asleep_since, resident.asleep_bytes = None, None, {}
        if resident.asleep == 1:  # vLLM keeps the weights' host buffer after the wake (vllm#16663)
            resident.host_kept = max(resident.host_kept, resident.host_bytes)
        resident.host_bytes = resident.host_seen = 0
        if self.residents.get(model) is resident:  # the newest again: the single-slot view's model
            self.residents[model] = self.residents.pop(model)
        return True

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
        able_to_sleep = self.sleep_mode(model)
        engine = launch(self.loaded, model, on_progress=self.on_progress, on_dead=self._engine_died,
                        log_dir=self.log_dir, nvml_module=self.nvml_module, on_launched=self._track,
                        gpus=gpus if self.report.gpus else None,
                        utilization=share.utilization if share and share.basis != "alone" else None,
                        sleep_mode=able_to_sleep)
        planned = {g: share.bytes_on(cards[g].total_bytes) for g in gpus} if share else {}
        self.residents.pop(model, None)
        self.residents[model] = Resident(model, engine, gpus, share or Share(model, 0, 0, "alone"), planned,
                                         sleep_mode=able_to_sleep)
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
            if resident.state == "sleeping":  # what it keeps asleep is its reservation now
                for gpu in resident.gpus:
                    total[gpu] = total.get(gpu, 0) + resident.asleep_on(gpu)
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
            vram_bytes=sum((resident.asleep_bytes if resident.asleep else resident.measured_bytes).values()) or None,
            vram_planned_bytes=sum(resident.planned_bytes.values()) or None,
            vram_peak_bytes=sum(resident.peak_bytes.values()) or None,
            in_flight=running, waiting=waiting, idle_s=idle_s, pinned=pinned, keep_alive_s=keep,
            unload_in_s=round(max(0.0, keep - (idle_s or 0)), 1) if expires else None,
            sleep_level=resident.asleep, host_bytes=resident.host_bytes or None, can_sleep=resident.sleep_mode)

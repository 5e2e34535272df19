"""The engines the gateway owns: every model that fits stays loaded.

The pool carries out what the scheduler decides (gateway/scheduler.py): a switch sends the
residents it evicts to sleep where they may (gateway/sleep_policy.py) or stops them, waits
for their VRAM, wakes the model where it sleeps or starts it where placement puts it
(gateway/placement.py), and waits for ready; a model a request loads is first pulled into
the Hugging Face cache if it lacks it (gateway/downloads.py), before anything is evicted.
Each engine is a Resident with one state (gateway/resident.py). An engine's death is seen
by its supervisor's watcher, or by the check a failed request asks for (`check`); the next
switch to its model is a restart, which carries how it died, and happens only within a
budget (gateway/restarts.py). The pool measures its engines with NVML, reports timings,
and names the engine processes it runs (for the state file). A closing pool starts nothing.

Several switches may be under way at once, on GPUs and victims that do not meet (the
scheduler's rule). Each keeps to its own: `loading` names each switch's model and the GPUs
it loads onto, which placement keeps every other model off, and which no other switch
touches the engine of (a dead one it restarts, a sleeper it wakes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Mapping

import psutil

from animllm_cli.config import LoadedConfig
from animllm_cli.engine import sleep
from animllm_cli.engine.python_env import PythonEnv
from animllm_cli.engine.standby import Keeper
from animllm_cli.engine.supervisor import Engine, Progress, State, StopReport, launch
from animllm_cli.gateway import placement
from animllm_cli.gateway.downloads import Download
from animllm_cli.gateway.launched import Launched
from animllm_cli.gateway.placement import PoolView
from animllm_cli.gateway.resident import Resident, ResidentState, reserved, sleepers
from animllm_cli.gateway.restarts import RestartBudget
from animllm_cli.gateway.scheduler import Decision
from animllm_cli.gateway.sleep_policy import SleepPolicy, count_host_ram
from animllm_cli.gpu import nvml
from animllm_cli.gpu.planner import Card, Share, card_shares
from animllm_cli.runfile import EngineGroup
from animllm_cli.units import gib
from animllm_cli.wire import EngineDeath, SleepModeStatus, SwitchReport

SWITCH_HISTORY = 100
log = logging.getLogger(__name__)


class PoolClosing(Exception):
    """The gateway is stopping: no engine is started any more."""


class NoRoom(Exception):
    """The plan has no room for the model now (the scheduler evicts first, so this means
    the card changed under it: another process took memory)."""


class EnginePool:
    def __init__(self, loaded: LoadedConfig, *, log_dir: Path | None = None, nvml_module: object | None = None,
                 on_progress: Callable[[Progress], None] | None = None,
                 on_death: Callable[[str, EngineDeath], None] | None = None,
                 on_engines_changed: Callable[[], None] | None = None,
                 max_restarts: int = 3, restart_window_s: float = 600.0,
                 engine_env: PythonEnv | None = None, host_available: Callable[[], int] | None = None,
                 pull: bool = True) -> None:
        """`engine_env`: what the engine's Python has installed (whether its vLLM can sleep);
        `host_available`: the host RAM free now (psutil's `available`; tests pass their own);
        `pull`: download a model a request loads when the cache lacks it (off: `serve
        --no-pull`, and the engine fetches it)."""
        self.loaded = loaded
        self.sleep_policy = SleepPolicy(loaded, engine_env,
                                        host_available or (lambda: psutil.virtual_memory().available))
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
        self.restarts = RestartBudget(max_restarts, restart_window_s)
        self.deaths: dict[str, EngineDeath] = {}    # model -> how its engine died, until it runs again or is stopped
        self._taken: weakref.WeakSet[Engine] = weakref.WeakSet()  # the engines whose death the pool has taken
        self.pull = pull
        self.downloads: dict[str, Download] = {}    # model -> its pull under way (a switch's first phase)
        self.loading: dict[str, tuple[int, ...]] = {}  # model -> the GPUs it goes on, for each switch under way
        self._checks: dict[Engine, asyncio.Future] = {}  # the check under way of each engine a request found failing
        self._shares: dict[int, dict[str, Share]] = {}  # card size -> each model's share of it
        self._loop: asyncio.AbstractEventLoop | None = None
        self.launched = Launched(self._engines_changed)
        self._closing = False
        self._refreshing = threading.Lock()  # the sampler's and a switch's NVML readings, one at a time
        self.standbys = Keeper(enabled=loaded.config.engine.standby, grace_s=loaded.config.engine.stop_grace_s)

    # ------------------------------------------------------------------ what is loaded
    @property
    def models(self) -> list[str]:
        """The models whose engines are ready: the scheduler's residents."""
        return [m for m, r in self.residents.items() if r.state is ResidentState.READY]

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
        return sleepers(self.residents.values())

    @property
    def asleep(self) -> list[str]:
        """The models asleep or waking up (a request for one waits for its wake)."""
        return [m for m, r in self.residents.items() if r.state in (ResidentState.SLEEPING, ResidentState.WAKING)]

    @property
    def restarting(self) -> list[str]:
        """The models whose engine died and has not run since: loading one is a restart."""
        return list(self.deaths)

    @property
    def support(self) -> sleep.Support:
        return self.sleep_policy.support(self.report)

    def sleep_status(self) -> SleepModeStatus:
        return self.sleep_policy.status(self.report)

    def host_room(self) -> int:
        return self.sleep_policy.host_room(self.residents.values())

    def engine_for(self, model: str) -> Engine | None:
        resident = self.residents.get(model)
        return resident.engine if resident and resident.state is ResidentState.READY else None

    def live_engine(self, model: str) -> Engine | None:
        """The model's engine while it runs, awake or asleep (its memory, stored responses
        included, is intact); None once it stopped or died."""
        resident = self.residents.get(model)
        live = (ResidentState.READY, ResidentState.SLEEPING, ResidentState.WAKING)
        return resident.engine if resident and resident.state in live else None

    def pinned(self, model: str) -> bool:
        return self.loaded.config.models[model].pin

    def keep_alive(self, model: str) -> float:
        """Seconds `model` stays loaded once idle (-1: forever): what a client last asked for
        this engine (Ollama's keep_alive), else its config's."""
        resident = self.residents.get(model)
        if resident is not None and resident.keep_alive_s is not None:
            return resident.keep_alive_s
        own = self.loaded.config.models[model].keep_alive
        return self.loaded.config.pool.keep_alive if own is None else own

    def give_keep_alive(self, model: str, seconds: float | None) -> None:
        """A client's keep_alive for `model`'s engine, for that engine's life (None: the
        config's again), as Ollama's requests set it: each request sets it anew."""
        resident = self.residents.get(model)
        if resident is not None:
            resident.keep_alive_s = seconds

    # ------------------------------------------------------------------ the plan
    def share(self, model: str, card_bytes: int) -> Share:
        if card_bytes not in self._shares:
            self._shares[card_bytes] = card_shares(self.loaded, card_bytes)
        return self._shares[card_bytes][model]

    @property
    def view(self) -> PoolView:
        """What placement reads: the residents now and NVML's latest report."""
        return PoolView(self.loaded.config, self.residents, self.report, self.share, self.loading)

    def fits(self, model: str, evicting: frozenset[str],
             switching: Mapping[str, tuple[int, ...]] | None = None) -> tuple[int, ...] | None:
        """For the scheduler, on the event loop: the GPUs `model` goes on once `evicting` is
        gone, None if it does not fit; it must not raise. `switching`: the scheduler's
        switches in progress, the latest begun maybe not under way here yet. Should the plan
        fail (a model's files unreadable, say), the model fits only alone, as before the
        pool, and takes every GPU (so that no switch runs beside it)."""
        view = dataclasses.replace(self.view, loading={**(switching or {}), **self.loading})  # where it goes, as it went
        try:
            return placement.fits(view, model, evicting)
        except Exception:  # noqa: BLE001 - logged, and the switch's own launch reports it
            log.exception("placing %s failed; treating it as one engine at a time", model)
            alone = not placement.others(view, model, evicting) and not placement.loading_beside(view, model)
            return (tuple(g.index for g in self.report.gpus) or (0,)) if alone else None

    def refresh(self) -> nvml.GpuReport:
        """Read NVML (blocking: call it in a thread) and take each ready or sleeping
        engine's footprint from it."""
        return self.reading()[0]

    def reading(self) -> tuple[nvml.GpuReport, set[int]]:
        """`refresh()`, and every process the engines had while it read: the engines' own in
        that reading, even one that ended since (admission counts the rest as another
        program's memory)."""
        with self._refreshing:
            before = list(self.residents.values())
            report = nvml.probe(self.nvml_module)
            residents = {*before, *self.residents.values()}  # one launched meanwhile may be in the reading
            pids = {pid for resident in residents for pid in resident.measure(report.gpus)}
            self.report = report
            return report, pids

    def reserved(self) -> dict[int, int] | None:
        """GPU -> what the engines hold for admission; None while a ready one is unmeasured."""
        return reserved(self.residents.values())

    # ------------------------------------------------------------------ switches
    def claim(self, decision: Decision) -> None:
        """The scheduler begins `decision` (called at once, before it decides anything else):
        its model's GPUs are taken from now, not only once its switch task runs, so that no
        other switch places onto them or stops the sleeper it wakes meanwhile."""
        if decision.model is not None:
            self.loading[decision.model] = decision.gpus

    def reports_since(self, recorded: int) -> list[SwitchReport]:
        """The switches that ended after `switches_recorded` was `recorded`, oldest first
        (those still in the history): what a caller that waited on one reads its report from,
        whatever other switches ended meanwhile."""
        newer = self.switches_recorded - recorded
        return self.switches[-newer:] if newer > 0 else []

    async def switch(self, decision: Decision) -> SwitchReport:
        """Make room for `decision.model`, then wake it where it sleeps or start it where
        placement puts it, and wait for ready. Every switch, failed or not, is recorded."""
        self._loop = asyncio.get_running_loop()
        model = decision.model
        started = time.monotonic()
        if model is not None:
            self.loading[model] = decision.gpus  # until it ends, another switch keeps off them
        report = SwitchReport(from_model=decision.evict[0] if decision.evict else None, to_model=model,
                              evicted=list(decision.evict), outcome="failed", reason=decision.reason,
                              chosen_by=decision.chosen_by,
                              death=self.deaths.get(model) if model and decision.reason == "restart" else None)
        try:
            if model is not None:
                self._refuse_if_closing(model)
                self.restarts.check(model)
                if self.pull and not decision.explicit and model not in self.sleepers:
                    await self._download(model, report)
            free_before = await self._make_room(model, decision, report)
            if model is not None:
                await self._load(model, report, free_before)
                self.deaths.pop(model, None)
            report.outcome = "ok"
            return report
        except Exception as exc:
            report.error = getattr(exc, "reason", None) or str(exc)
            raise
        finally:
            if model is not None:
                self.loading.pop(model, None)
            report.total_s = round(time.monotonic() - started, 3)
            report.finished_at = time.time()
            self.last_switch = report
            self.switches = [*self.switches[-SWITCH_HISTORY + 1:], report]
            self.switches_recorded += 1

    async def _download(self, model: str, report: SwitchReport) -> None:
        """Pull `model` into the Hugging Face cache if it lacks it, in a thread, before anything
        is evicted (a failed download leaves the pool as it was). An explicit load is not
        pulled here: its command (`serve`, `switch`) pulled it, with progress in its terminal,
        unless told not to."""
        download = self.downloads[model] = Download(model, self.on_progress, lambda: self._refuse_if_closing(model))
        try:
            note = await asyncio.to_thread(download.run, self.loaded)
        finally:
            del self.downloads[model]
        if note:
            report.notes.append(note)

    async def _make_room(self, model: str | None, decision: Decision, report: SwitchReport) -> dict[int, int]:
        """Send the residents `decision.evict` names to sleep where they may and the card
        has room for `model` beside the sleepers, else stop them; stop any dead engine, and
        the sleepers the card cannot keep once NVML has measured them. Returns each GPU's
        free bytes then (the load measures its model on its own first GPU)."""
        asleep, stop = self.sleep_policy.leaving(self.view, decision, report.notes)
        theirs = set(self.loading) - {model}  # another switch restarts its dead engine itself
        dead = [m for m, r in self.residents.items()
                if (r.state is ResidentState.DEAD and m not in theirs)
                or (m == model and r.state is not ResidentState.SLEEPING)]
        stopped, slept = await asyncio.gather(self._evict([*stop, *dead]), self._sleep(asleep, report),
                                              return_exceptions=True)  # neither left running on a failure
        failures = [o for o in (stopped, slept) if isinstance(o, BaseException)]
        for extra in failures[1:]:
            log.error("making room for %s also failed", model, exc_info=extra)
        if failures:
            raise failures[0]
        self._note_stops(stopped, report)
        if decision.explicit or model is None:  # `switch` elsewhere or `unload`: its next load is no restart
            for gone in dead:
                if gone != model:
                    self.deaths.pop(gone, None)
        # a request's load of another model keeps the death: requests may be waiting for its restart
        await asyncio.to_thread(self.refresh)
        if model is not None:
            await self._stop_sleepers_short_of(model, report)
        free = {g.index: g.free_bytes for g in self.report.gpus}
        planned = decision.gpus[0] if decision.gpus else next(iter(free), 0)
        report.vram_free_before = free.get(planned)
        return free

    async def _load(self, model: str, report: SwitchReport, free_before: dict[int, int]) -> None:
        """Wake `model`, or start it cold; then take what it holds at ready (admission)."""
        self._refuse_if_closing(model)  # shutdown may have begun while the others stopped
        if not await self._wake(model, report):
            self._refuse_if_closing(model)  # shutdown may have stopped it during the wake
            await self._start(model, report)
        self._refuse_if_closing(model)  # shutdown stopped it during its wake
        resident = self.residents[model]
        resident.loaded_at = time.time()
        await asyncio.to_thread(self.refresh)
        first = resident.gpus[0] if resident.gpus else 0  # its own GPU, not GPU 0 (another switch may load there)
        report.vram_free_before, report.vram_free_after = free_before.get(first), self._free(first)
        resident.reserve(self.report.gpus, report.vram_free_before, report.vram_free_after)
        report.gpus = list(resident.gpus)

    async def _start(self, model: str, report: SwitchReport) -> None:
        resident = self._launch(model)
        try:
            ready = await asyncio.to_thread(resident.engine.start)
            report.load_s, report.load_kind, report.launched_by = round(ready.ready_s, 3), "cold", ready.launched_by
            self._refuse_if_closing(model)  # shutdown stopped it just as it became ready
        except Exception:
            if resident.engine.state is State.STOPPED:  # a failed start stops what it launched
                self.launched.forget(resident.engine)
                resident.gone()
                if self.residents.get(model) is resident:
                    del self.residents[model]
            raise
        # The next start's interpreter, begun now that this one no longer needs the CPU.
        await asyncio.to_thread(self.standbys.refill, resident.engine.command)
        resident.ready()

    @staticmethod
    def _note_stops(stopped: list[StopReport], report: SwitchReport) -> None:
        if stopped:
            report.stop_s = max(s.stop_s for s in stopped)
            releases = [s.vram_release_s for s in stopped if s.vram_release_s is not None]
            report.vram_release_s = max(releases) if releases else None
            report.vram_note = "; ".join(dict.fromkeys(s.vram_note for s in stopped))

    # ------------------------------------------------------------------ sleep
    async def _sleep(self, levels: dict[str, int], report: SwitchReport) -> None:
        """Send these residents to sleep at once; one that fails to sleep is stopped."""
        going = [self.residents[m] for m in levels]
        if not going:
            return
        for resident in going:
            resident.fall_asleep(levels[resident.model])
        before = self.sleep_policy.host_available()
        timeout = self.loaded.config.engine.start_timeout_s
        results = await asyncio.gather(*(asyncio.to_thread(sleep.put_to_sleep, r.engine, levels[r.model], timeout)
                                         for r in going), return_exceptions=True)
        shown_gone = max(0, before - self.sleep_policy.host_available())
        failed = []
        for resident, result in zip(going, results):
            if isinstance(result, BaseException):
                failed.append(resident.model)
                report.notes.append(f"{resident.model}: stopped, its sleep failed: {result}")
                continue
            report.sleep_s = round(max(report.sleep_s or 0.0, result), 3)
            report.slept.append(resident.model)
            resident.host_bytes = (resident.share.weight_bytes or 0) if resident.sleep_level == 1 else 0
            # A sample taken while it fell asleep is not what it keeps asleep. Under the
            # refresh lock, taken in a thread: a refresh in progress must not block the loop.
            await asyncio.to_thread(self._forget_asleep_bytes, resident)
        count_host_ram([r for r in going if r.model not in failed], shown_gone)
        if failed:
            self._note_stops(await self._evict(failed), report)

    def _forget_asleep_bytes(self, resident: Resident) -> None:
        with self._refreshing:
            resident.asleep_bytes = {}

    async def _stop_sleepers_short_of(self, model: str, report: SwitchReport) -> None:
        """Now that NVML has measured the sleepers: if the card is still short for
        `model`, stop them, the longest asleep first."""
        spare = [m for m in self.sleepers if m != model and m not in self.loading]  # not one another switch wakes
        if placement.place(self.view, model) is not None or placement.place(self.view, model, frozenset(spare)) is None:
            return  # it fits as it is, or stopping every sleeper would not make it fit either
        while placement.place(self.view, model) is None:
            spare = [m for m in self.sleepers if m != model and m not in self.loading]
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
        if resident is None or resident.state is not ResidentState.SLEEPING:
            return False
        if placement.place(self.view, model) != resident.gpus:  # no room where it sleeps: start it where there is
            report.notes.append(f"{model}: stopped and started cold: no room on GPU "
                                f"{', '.join(map(str, resident.gpus))} where it slept")
            self._note_stops(await self._evict([model]), report)
            return False
        level = resident.sleep_level
        resident.wake()
        try:
            woke = await asyncio.to_thread(sleep.wake, resident.engine, level, self.loaded.config.engine.start_timeout_s)
        except sleep.SleepError as exc:
            report.wake_error = resident.engine.explain(f"its wake from level {level} failed: {exc}")
            self._note_stops(await self._evict([model]), report)
            return False
        report.wake_s, report.load_kind, report.wake_level = round(woke, 3), "wake", level
        if resident.state is ResidentState.WAKING:
            resident.woke()
        # else it died, or a shutdown began, during the wake: the shutdown fails the switch
        # next; a dead engine is restarted by the next switch (within its restart budget).
        if self.residents.get(model) is resident:  # the newest again: the single-slot view's model
            self.residents[model] = self.residents.pop(model)
        return True

    # ------------------------------------------------------------------ engines
    def _launch(self, model: str) -> Resident:
        found = placement.cards(self.view)
        cards = {c.index: c for c in found or [Card(0, 0, 0)]}
        named = self.loaded.config.models[model].gpus or []
        if set(named) - set(cards):
            raise NoRoom(f"models.{model}.gpus names GPU {', '.join(str(g) for g in named if g not in cards)}, "
                         f"which this machine does not have (GPUs: {', '.join(map(str, cards))})")
        gpus = placement.place(self.view, model, found_cards=found)
        if gpus is None:
            free = ", ".join(f"GPU {c.index}: {gib(c.room_bytes)}" for c in found or [])
            raise NoRoom(f"no room for '{model}' now ({free or 'no card size known'} below the threshold); "
                         f"see `animllm plan --together`")
        self.loading[model] = gpus  # where it goes after all: the other switches keep off these
        share = self.share(model, cards[gpus[0]].total_bytes) if cards[gpus[0]].total_bytes else None
        able_to_sleep = self.sleep_policy.launch_able(model, self.report)
        engine = launch(self.loaded, model, on_progress=self.on_progress, on_dead=self._engine_died,
                        log_dir=self.log_dir, nvml_module=self.nvml_module, on_launched=self.launched.track,
                        gpus=gpus if self.report.gpus else None,
                        utilization=share.utilization if share and share.basis != "alone" else None,
                        sleep_mode=able_to_sleep)
        engine.standby = self.standbys.take(engine.command)
        planned = {g: share.bytes_on(cards[g].total_bytes) for g in gpus} if share else {}
        self.residents.pop(model, None)
        resident = Resident(model, engine, gpus, share or Share(model, 0, 0, "alone"), planned, sleep_mode=able_to_sleep)
        self.residents[model] = resident
        return resident

    def _free(self, gpu: int) -> int | None:
        """GPU `gpu`'s free bytes in NVML's latest report; None where it has none."""
        return next((g.free_bytes for g in self.report.gpus if g.index == gpu), None)

    async def _evict(self, models: list[str]) -> list[StopReport]:
        """Stop these residents at once (each stop waits for its VRAM), and forget them."""
        leaving = [self.residents[m] for m in dict.fromkeys(models) if m in self.residents]
        for resident in leaving:
            resident.leave()
        try:
            stopped = await asyncio.gather(*(asyncio.to_thread(r.engine.stop) for r in leaving),
                                           return_exceptions=True)
        finally:  # even a stop that raised leaves the pool: its room must not stay taken
            for resident in leaving:
                resident.gone()
                if self.residents.get(resident.model) is resident:
                    del self.residents[resident.model]
                self.launched.forget(resident.engine)
        failed = [s for s in stopped if isinstance(s, BaseException)]
        if failed:
            raise failed[0]
        return [s for s in stopped if s.stop_s or s.left]

    def _engine_died(self, engine: Engine, reason: str) -> None:
        """Called from the thread that found the engine dead (its watcher, or a request's check):
        the loop makes the transition (resident.py)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the gateway is gone
                self._loop.call_soon_threadsafe(self._on_death, engine)

    def _on_death(self, engine: Engine) -> None:
        """On the loop, once per engine (its supervisor hands the death over, and a check may
        take it first): the death counts against the model's restart budget, and its
        resident (if it is still this engine's) becomes dead, to be restarted."""
        if engine in self._taken:
            return
        self._taken.add(engine)
        self.restarts.died(engine.model)
        resident = self.residents.get(engine.model)
        if resident is not None and resident.engine is engine and resident.died() and engine.death:
            self.deaths[engine.model] = engine.death
        if self.on_death and engine.death:
            self.on_death(engine.model, engine.death)

    async def check(self, engine: Engine) -> EngineDeath | None:
        """Whether `engine` is dead, asked when a request to it failed: its death, else None.
        Requests that fail together share one check. A death, found by this check or by
        the watcher, is taken here if the supervisor's hand-over has not reached the loop
        yet: the resident is dead when this returns, so that a request that goes to wait for
        the restart is never sent to the dead engine again."""
        if engine.death is None:
            checking = self._checks.get(engine)
            if checking is None:
                checking = self._checks[engine] = asyncio.ensure_future(asyncio.to_thread(engine.check))
                checking.add_done_callback(lambda _: self._checks.pop(engine, None))
            await asyncio.shield(checking)
        if engine.death is not None:
            self._on_death(engine)
        return engine.death

    def _refuse_if_closing(self, model: str) -> None:
        if self._closing:
            raise PoolClosing(f"the gateway is stopping: not starting '{model}'")

    def _engines_changed(self) -> None:
        if self.on_engines_changed:
            self.on_engines_changed()

    def engine_groups(self) -> list[EngineGroup]:
        """The engine processes this gateway runs: for the state file."""
        return self.launched.groups()

    def all_pids(self) -> set[int]:
        return {pid for r in list(self.residents.values()) for pid in r.engine.pids()}

    async def shutdown(self) -> StopReport | None:
        """Start nothing more, and stop every engine at once, even one that is still
        starting (its start then fails at once) or that a switch is about to replace.
        Returns the slowest stop (the one the user waited for)."""
        self._closing = True
        await asyncio.to_thread(self.standbys.close)
        stopped = await self._evict(list(self.residents))
        self.deaths.clear()  # nothing is restarted any more
        left = sorted(pid for s in stopped for pid in s.left)
        if not stopped:
            return None
        slowest = max(stopped, key=lambda s: s.stop_s)
        return StopReport(", ".join(s.model for s in stopped), slowest.stop_s, any(s.forced for s in stopped), left,
                          slowest.vram_release_s, slowest.vram_note)

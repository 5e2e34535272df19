"""The one engine the gateway owns: switch models (drain is the scheduler's job; here:
stop, VRAM released, start, ready), restart after a death with a bound, report timings,
and say which engine processes run (for the state file). A closing manager starts nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

from animllm_cli.config import LoadedConfig
from animllm_cli.engine.supervisor import Engine, Progress, State, launch
from animllm_cli.gateway.state import EngineGroup, EngineStatus, SwitchReport
from animllm_cli.gpu import nvml


class EngineGaveUp(Exception):
    pass


class ManagerClosing(Exception):
    """The gateway is stopping: no engine is started any more."""


class EngineManager:
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
        self.engine: Engine | None = None
        self.last_switch: SwitchReport | None = None
        self.loaded_at: float | None = None
        self.max_restarts, self.restart_window_s = max_restarts, restart_window_s
        self._deaths: dict[str, list[float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Every engine launched and not yet confirmed stopped, including one being replaced
        # or shut down: what a dead gateway would leave behind.
        self._running: list[Engine] = []
        self.on_engines_changed = on_engines_changed
        self._closing = False

    @property
    def model(self) -> str | None:
        """The model whose engine is ready: the gateway's one record of what is loaded."""
        return self.engine.model if self.engine and self.engine.state is State.READY else None

    def _vram_free(self) -> int | None:
        report = nvml.probe(self.nvml_module)
        return report.gpus[0].free_bytes if report.gpus else None

    async def switch(self, model: str, *, reason: str | None = None, chosen_by: str | None = None) -> SwitchReport:
        """Stop what is loaded (if anything), wait for its VRAM, start `model`, wait for ready.
        `reason` and `chosen_by` are the scheduler's decision, kept in the report."""
        self._loop = asyncio.get_running_loop()
        self._refuse_if_closing(model)
        self._check_restarts(model)
        started = time.monotonic()
        report = SwitchReport(from_model=self.engine.model if self.engine else None, to_model=model, outcome="failed",
                              reason=reason, chosen_by=chosen_by)
        engine: Engine | None = None
        try:
            if self.engine is not None:
                stopped = await self._stop(self.engine)
                report.stop_s, report.vram_release_s, report.vram_note = (
                    stopped.stop_s, stopped.vram_release_s, stopped.vram_note)
                self.engine = None
            report.vram_free_before = await asyncio.to_thread(self._vram_free)
            self._refuse_if_closing(model)  # shutdown may have begun while the old engine stopped
            engine = launch(self.loaded, model, on_progress=self.on_progress, on_dead=self._engine_died,
                            log_dir=self.log_dir, nvml_module=self.nvml_module, on_launched=self._track)
            self.engine = engine  # from here shutdown() sees it, and its stop ends the start at once
            ready = await asyncio.to_thread(engine.start)
            self._refuse_if_closing(model)  # shutdown stopped it just as it became ready
            report.load_s = round(ready.ready_s, 3)
            report.vram_free_after = await asyncio.to_thread(self._vram_free)
            report.outcome = "ok"
            self.loaded_at = time.time()
            return report
        except Exception as exc:
            report.error = getattr(exc, "reason", None) or str(exc)
            self.engine = None
            if engine is not None and engine.state is State.STOPPED:  # a failed start stops what it launched
                self._untrack(engine)
            raise
        finally:
            report.total_s = round(time.monotonic() - started, 3)
            report.finished_at = time.time()
            self.last_switch = report

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
            raise ManagerClosing(f"the gateway is stopping: not starting '{model}'")

    async def _stop(self, engine: Engine) -> Any:
        stopped = await asyncio.to_thread(engine.stop)
        self._untrack(engine)
        return stopped

    def _track(self, engine: Engine) -> None:
        """Called from the starting thread as soon as the engine's process exists."""
        self._running.append(engine)
        self._engines_changed()

    def _untrack(self, engine: Engine) -> None:
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

    async def shutdown(self) -> Any:
        """Start nothing more, and stop the engine, even one that is still starting (its
        start then fails at once) or that a switch is about to replace."""
        self._closing = True
        if self.engine is None:
            return None
        engine, self.engine = self.engine, None
        return await self._stop(engine)

    def status(self, switching_to: str | None) -> EngineStatus:
        """The engine's part of `/admin/status`; `switching_to` is the scheduler's switch in progress."""
        engine = self.engine
        return EngineStatus(
            model=engine.model if engine else None,
            state="switching" if switching_to else (engine.state.value if engine else "none"),
            switching_to=switching_to,
            phase=engine.phase if engine else None,
            engine_pid=engine.pid if engine else None,
            engine_url=engine.base_url if engine else None,
            death_reason=engine.death_reason if engine else None,
            log_path=str(engine.log_path) if engine else None,
            loaded_since=self.loaded_at if engine and engine.state is State.READY else None,
            last_switch=self.last_switch)

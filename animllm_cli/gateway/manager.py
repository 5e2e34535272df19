"""The one engine the gateway owns: switch models (drain is the scheduler's job; here:
stop, VRAM released, start, ready), restart after a death with a bound, report timings."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

from animllm_cli.config import LoadedConfig
from animllm_cli.engine.supervisor import Engine, Progress, State, launch
from animllm_cli.gateway.state import EngineStatus, SwitchReport
from animllm_cli.gpu import nvml


class EngineGaveUp(Exception):
    pass


class EngineManager:
    def __init__(self, loaded: LoadedConfig, *, log_dir: Path | None = None, nvml_module: object | None = None,
                 on_progress: Callable[[Progress], None] | None = None,
                 on_death: Callable[[str, str], None] | None = None,
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

    @property
    def model(self) -> str | None:
        """The model whose engine is ready: the gateway's one record of what is loaded."""
        return self.engine.model if self.engine and self.engine.state is State.READY else None

    def _vram_free(self) -> int | None:
        report = nvml.probe(self.nvml_module)
        return report.gpus[0].free_bytes if report.gpus else None

    async def switch(self, model: str) -> SwitchReport:
        """Stop what is loaded (if anything), wait for its VRAM, start `model`, wait for ready."""
        self._loop = asyncio.get_running_loop()
        self._check_restarts(model)
        started = time.monotonic()
        report = SwitchReport(from_model=self.engine.model if self.engine else None, to_model=model, outcome="failed")
        try:
            if self.engine is not None:
                stopped = await asyncio.to_thread(self.engine.stop)
                report.stop_s, report.vram_release_s, report.vram_note = (
                    stopped.stop_s, stopped.vram_release_s, stopped.vram_note)
                self.engine = None
            report.vram_free_before = await asyncio.to_thread(self._vram_free)
            engine = launch(self.loaded, model, on_progress=self.on_progress, on_dead=self._engine_died,
                            log_dir=self.log_dir, nvml_module=self.nvml_module)
            self.engine = engine
            ready = await asyncio.to_thread(engine.start)
            report.load_s = round(ready.ready_s, 3)
            report.vram_free_after = await asyncio.to_thread(self._vram_free)
            report.outcome = "ok"
            self.loaded_at = time.time()
            return report
        except Exception as exc:
            report.error = getattr(exc, "reason", None) or str(exc)
            self.engine = None
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

    async def shutdown(self) -> Any:
        if self.engine is None:
            return None
        engine, self.engine = self.engine, None
        return await asyncio.to_thread(engine.stop)

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

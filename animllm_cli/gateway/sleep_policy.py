"""Whether an evicted engine sleeps rather than stops, and how deep: vLLM's sleep mode
(engine/sleep.py) where the platform has it, the model's `sleep` setting, and host RAM.

Level 1 puts a model's weights in host RAM, so the pool keeps count of what its sleepers
hold there: psutil's `available` shows that memory gone only some time after the sleep,
and an engine woken from level 1 keeps its buffer (vllm#16663), so its next sleep takes
no more.
"""

from __future__ import annotations

from typing import Callable, Iterable

from animllm_cli.config import LoadedConfig
from animllm_cli.engine import sleep
from animllm_cli.engine.python_env import PythonEnv
from animllm_cli.gateway import placement
from animllm_cli.gateway.placement import PoolView
from animllm_cli.gateway.resident import Resident, ResidentState, sleepers
from animllm_cli.gateway.scheduler import Decision
from animllm_cli.gpu.nvml import GpuReport
from animllm_cli.gpu.planner import model_quantization
from animllm_cli.units import GIB
from animllm_cli.wire import SleepModeStatus


class SleepPolicy:
    def __init__(self, loaded: LoadedConfig, engine_env: PythonEnv | None, host_available: Callable[[], int]) -> None:
        """`engine_env`: what the engine's Python has installed (whether its vLLM can sleep);
        `host_available`: the host RAM free now."""
        self.loaded, self.engine_env, self.host_available = loaded, engine_env, host_available

    def support(self, report: GpuReport) -> sleep.Support:
        """Whether engines here can sleep (the engine's vLLM build, NVML's GPUs)."""
        if self.engine_env is None:
            return sleep.Support(False, "the engine's Python was not probed")
        return sleep.platform_support(self.engine_env, report)

    def status(self, report: GpuReport) -> SleepModeStatus:
        support = self.support(report)
        return SleepModeStatus(available=support.available, reason=support.reason,
                               host_available_bytes=self.host_available() if support.available else None)

    def launch_able(self, model: str, report: GpuReport) -> bool:
        """Whether `model`'s engine is launched able to sleep: not `off`, a platform that
        can, and under `auto` no known-bad entry against sleep mode for it."""
        return sleep.launch_able(self.loaded, model, self.support(report))

    def host_room(self, residents: Iterable[Resident]) -> int:
        """Host RAM a level-1 sleeper may take now: what is available less the margin, less
        what the sleepers hold that `available` does not show yet."""
        margin = int(self.loaded.config.pool.sleep_ram_margin_gib * GIB)
        unseen = sum(max(0, r.host_bytes - r.host_seen) for r in residents if r.state is ResidentState.SLEEPING)
        return self.host_available() - margin - unseen

    def choice(self, resident: Resident, host_room: int, report: GpuReport) -> sleep.Choice:
        model, support = resident.model, self.support(report)
        setting, quantization = self.loaded.config.models[model].sleep, model_quantization(self.loaded, model)
        if not resident.sleep_mode:
            bad = sleep.avoided(support.vllm_version, None, quantization)
            reason = "sleep: off" if setting == "off" else f"cannot sleep here: {support.reason}" \
                if not support.available else f"not launched able to sleep ({bad.issue}: {bad.summary})" \
                if bad else "not launched able to sleep"
            return sleep.Choice(None, reason)
        return sleep.choose_level(setting, support, resident.share.weight_bytes, host_room, quantization)

    def leaving(self, view: PoolView, decision: Decision, notes: list[str]) -> tuple[dict[str, int], list[str]]:
        """How each model `decision` evicts leaves the card: asleep (model -> level) or
        stopped; and the sleepers that must stop too for `decision.model` to fit beside
        the new ones. An unload always stops."""
        model, residents = decision.model, view.residents
        victims = [residents[v] for v in decision.evict if v in residents]
        levels = {} if decision.reason == "unload" else self._levels(
            victims, residents.values(), view.report, asked=decision.reason == "sleep", notes=notes)
        gone = [v.model for v in victims if v.model not in levels]
        if model is None:
            return levels, gone
        # Should the card be short with the sleepers' leftovers, the longest asleep stop first
        # (not one that another switch under way wakes).
        spare = [*(m for m in sleepers(residents.values()) if m != model and m not in view.loading),
                 *reversed(list(levels))]
        also = placement.sleepers_to_stop(view, model, gone, spare, frozenset(levels))
        for sleeper in also:
            notes.append(f"{sleeper}: stopped, not kept asleep: the card has no room for '{model}' beside it")
        return {v: level for v, level in levels.items() if v not in also}, [*gone, *also]

    def _levels(self, victims: list[Resident], residents: Iterable[Resident], report: GpuReport, *, asked: bool,
                notes: list[str]) -> dict[str, int]:
        """The level each of `victims` sleeps at (those left out stop), sharing out the host
        RAM there is. `asked`: `animllm unload --sleep`, whose stops are noted even for an
        engine not launched able to sleep."""
        levels: dict[str, int] = {}
        room = self.host_room(residents)
        for victim in victims:
            if victim.state is not ResidentState.READY:  # dead, or gone since the decision: it can only stop
                if victim.sleep_mode or asked:
                    notes.append(f"{victim.model}: stopped, not sent to sleep: it is {victim.state.value}")
                continue
            choice = self.choice(victim, room, report)
            if choice.level:
                levels[victim.model] = choice.level
                room -= (victim.share.weight_bytes or 0) if choice.level == 1 else 0
            elif victim.sleep_mode or asked:
                notes.append(f"{victim.model}: stopped, not sent to sleep: {choice.why}")
        return levels


def count_host_ram(slept: list[Resident], shown_gone: int) -> None:
    """How much of the sleepers' host RAM `available` shows gone (`shown_gone` since their
    sleep began): an engine woken before keeps that memory (vllm#16663), so only the rest
    can have gone now, shared out in proportion."""
    new = {r.model: max(0, r.host_bytes - r.host_kept) for r in slept}
    total = sum(new.values())
    for resident in slept:
        shown = shown_gone * new[resident.model] // total if total else 0
        resident.host_seen = min(resident.host_bytes, resident.host_kept + shown)

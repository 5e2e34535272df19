"""Run the registered checks and assemble the report (the `--json` schema)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from animllm_cli.config import LoadedConfig
from animllm_cli.doctor import registry
# The rows register themselves on import, in the order the checklist shows them.
from animllm_cli.doctor import gpu_rows, software_rows, sleep_rows, host_rows  # noqa: F401,E402
from animllm_cli.errors import UsageError
from animllm_cli.gpu.nvml import GpuReport

SCHEMA_VERSION = 1


@dataclass
class CheckOutcome:
    id: str
    title: str
    status: str
    detail: str
    fix: str | None

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class DoctorReport:
    checks: list[CheckOutcome]
    gpus: GpuReport
    plan: Any
    elapsed_s: float
    strict: bool

    @property
    def exit_code(self) -> int:
        statuses = {c.status for c in self.checks}
        return 1 if registry.FAIL in statuses or (self.strict and registry.WARN in statuses) else 0

    def to_json(self) -> dict[str, Any]:
        counts = {s.lower(): sum(c.status == s for c in self.checks)
                  for s in (registry.PASS, registry.WARN, registry.FAIL, registry.SKIP)}
        return {"schema_version": SCHEMA_VERSION,
                "summary": {**counts, "strict": self.strict, "exit_code": self.exit_code,
                            "elapsed_s": round(self.elapsed_s, 3)},
                "checks": [c.to_json() for c in self.checks],
                "gpus": self.gpus.to_json(),
                "plan": self.plan.to_json(),
                "gateway": gateway_stack()}


def gateway_stack() -> dict[str, Any]:
    """What a gateway started here would run on (animllm_cli/server_stack.py)."""
    from animllm_cli import server_stack

    stack = server_stack.chosen()
    return {"event_loop": server_stack.loop_text(stack.loop), "http_parser": server_stack.http_text(stack.http),
            "fast": stack.fast}


def check_ids() -> list[str]:
    return [c.id for c in registry.REGISTRY]


def select(only: list[str], skip: list[str]) -> list[registry.Check]:
    known = check_ids()
    unknown = [i for i in [*only, *skip] if i not in known]
    if unknown:
        raise UsageError(f"unknown check id: {', '.join(unknown)}", hint=f"check ids: {', '.join(known)}")
    return [c for c in registry.REGISTRY if (not only or c.id in only) and c.id not in skip]


def with_prerequisites(asked: list[registry.Check], skip: list[str]) -> list[registry.Check]:
    """The checks asked for and those they need (unless --skip names them), in registration order."""
    wanted = {c.id for c in asked}
    for item in reversed(registry.REGISTRY):  # a check needs only earlier ones: one pass backwards is closed
        if item.id in wanted:
            wanted.update(need for need in item.needs if need not in skip)
    return [c for c in registry.REGISTRY if c.id in wanted]


def _stops_dependents(result: registry.Result) -> bool:
    return result.status in (registry.FAIL, registry.SKIP)


def unmet_need(item: registry.Check, results: dict[str, registry.Result]) -> registry.Result | None:
    """SKIP when a check this one needs was skipped by --skip, FAILed or was SKIPped itself:
    its cause is reported once, on that row."""
    for need in item.needs:
        if need not in results:
            return registry.Result(registry.SKIP, f"needs {need} (left out by --skip)")
        if _stops_dependents(results[need]):
            return registry.Result(registry.SKIP, f"needs {need} ({results[need].status} above)")
    return None


def run_doctor(loaded: LoadedConfig, *, only: list[str] = (), skip: list[str] = (), deep: bool = False,
               strict: bool = False, model: str | None = None, nvml: ModuleType | None = None) -> DoctorReport:
    from animllm_cli.engine.command import engine_python
    from animllm_cli.engine.python_env import probe_python
    from animllm_cli.gpu.nvml import probe
    from animllm_cli.gpu.planner import plan_models, vram_basis

    started = time.perf_counter()
    asked = select(list(only), list(skip))
    gpus = probe(nvml)
    vram, basis = vram_basis(loaded, gpus, None)
    names = [loaded.catalogue.resolve(model)] if model else loaded.model_names()
    context = registry.DoctorContext(
        loaded=loaded, gpus=gpus, env=probe_python(engine_python(loaded), loaded.config.runtime.forbid_packages),
        plan=plan_models(loaded, names, vram, basis), model=names[0] if model else None, deep=deep)
    outcomes = []
    results: dict[str, registry.Result] = {}
    for item in with_prerequisites(asked, list(skip)):
        result = results[item.id] = unmet_need(item, results) or item.run(context)
        # A check run only because another needs it is shown where it stopped that one: its FAIL sets the exit code.
        if item in asked or _stops_dependents(result):
            outcomes.append(CheckOutcome(item.id, item.title, result.status, result.detail,
                                         None if result.status == registry.PASS else result.fix))
    return DoctorReport(outcomes, gpus, context.plan, time.perf_counter() - started, strict)

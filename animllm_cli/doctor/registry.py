"""The doctor's frame: a check is one small function that reads a `DoctorContext` and returns
a `Result`; the `@check` decorator registers it in the order the checklist shows (the row
modules are imported in that order by doctor/runner.py), with the checks it needs: where
one of those FAILs or is SKIPped, the runner SKIPs it, naming that one (one cause, one
failure)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Callable

from animllm_cli.config import LoadedConfig
from animllm_cli.engine.python_env import PythonEnv
from animllm_cli.gpu.nvml import GpuReport
from animllm_cli.gpu.planner import PlanReport

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
# Variables recent vLLM no longer reads, and what replaced them.
REPLACED_ENV = {
    "VLLM_ATTENTION_BACKEND": "the --attention-backend flag (extra_args: {attention-backend: NAME})",
    "VLLM_USE_TRITON_FLASH_ATTN": "nothing: it belonged to the removed V0 engine; drop it",
}
# vLLM releases whose torch pin matches a given torch (vLLM's own Requires-Dist).
VLLM_FOR_TORCH = {"2.7.0": "vllm>=0.9.0,<=0.10.0"}


@dataclass
class Result:
    status: str
    detail: str
    fix: str | None = None


@dataclass
class DoctorContext:
    loaded: LoadedConfig
    gpus: GpuReport
    env: PythonEnv
    plan: PlanReport
    model: str | None          # the model the VRAM check is about (None: the largest need)
    deep: bool = False
    process_env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    host_available: Callable[[], int] = field(default_factory=lambda: _host_available)  # bytes of host RAM free

    @functools.cached_property
    def sleep_support(self):
        """Whether engines can sleep here (engine/sleep.py): read once for the three sleep rows."""
        from animllm_cli.engine import sleep

        return sleep.platform_support(self.env, self.gpus)


def _host_available() -> int:
    import psutil

    return psutil.virtual_memory().available


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    run: Callable[[DoctorContext], Result]
    needs: tuple[str, ...] = ()   # checks registered before it whose FAIL or SKIP leaves it nothing to check


REGISTRY: list[Check] = []


def check(check_id: str, title: str, *, needs: tuple[str, ...] = ()):
    def register(function: Callable[[DoctorContext], Result]) -> Callable[[DoctorContext], Result]:
        registered = {c.id for c in REGISTRY}
        missing = set(needs) - registered   # the runner decides in registration order
        if missing:
            raise ValueError(f"check {check_id} needs {', '.join(sorted(missing))}, not registered before it")
        REGISTRY.append(Check(check_id, title, function, needs))
        return function
    return register


def version(text: str):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        return None


def checked_models(ctx: DoctorContext) -> list[str]:
    """The models the per-model rows are about: `--model`'s, else all of them."""
    return [ctx.model] if ctx.model else ctx.loaded.model_names()

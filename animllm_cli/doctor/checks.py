"""The checks. Each is one small function that reads a `DoctorContext` and returns a
`Result`; the `@check` decorator registers it in the order the checklist shows."""

from __future__ import annotations

import functools
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from animllm_cli.config import LoadedConfig
from animllm_cli.config.schema import UpstreamSpec
from animllm_cli.engine.python_env import PythonEnv
from animllm_cli.gpu.nvml import GpuReport
from animllm_cli.units import GIB, MIB, gib
from animllm_cli.gpu.planner import PlanReport, model_quantization

if TYPE_CHECKING:  # client/upstream imports httpx: only the upstreams row needs it
    from animllm_cli.client.upstream import Probe

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
    gpu: bool = False   # needs the NVIDIA driver: FAILs plainly without one


REGISTRY: list[Check] = []


def check(check_id: str, title: str, *, gpu: bool = False):
    def register(function: Callable[[DoctorContext], Result]) -> Callable[[DoctorContext], Result]:
        REGISTRY.append(Check(check_id, title, function, gpu))
        return function
    return register


def _version(text: str):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        return None


# ------------------------------------------------------------------------------ GPU rows

@check("driver", "NVIDIA driver reachable (NVML)", gpu=True)
def driver(ctx: DoctorContext) -> Result:
    report = ctx.gpus
    if not report.gpus:
        return Result(FAIL, "the driver answers but lists no GPU", "check `nvidia-smi`; in a container pass --gpus")
    return Result(PASS, f"driver {report.driver_version}, {len(report.gpus)} GPU(s)")


@check("cuda", "driver's CUDA version vs the CUDA pin", gpu=True)
def cuda(ctx: DoctorContext) -> Result:
    pin = ctx.loaded.config.runtime.cuda
    have = ctx.gpus.cuda_driver_version
    if not pin:
        return Result(PASS, f"driver supports CUDA {have} (no pin configured)")
    if _version(have) < _version(pin):
        return Result(FAIL, f"driver supports CUDA {have}; the pinned CUDA {pin} build of torch needs a newer driver",
                      f"update the NVIDIA driver to one that supports CUDA {pin}")
    return Result(PASS, f"driver supports CUDA {have} >= pinned {pin}")


@check("gpu", "GPU model and compute capability", gpu=True)
def gpu_identity(ctx: DoctorContext) -> Result:
    """Compares GPU 0, the one vLLM uses (it is what CUDA_VISIBLE_DEVICES leaves first)."""
    expected = ctx.loaded.config.gpu
    gpu = ctx.gpus.gpus[0]
    problems = []
    if expected.expect_name and gpu.name != expected.expect_name:
        problems.append(f"GPU {gpu.index} is {gpu.name}, the config expects {expected.expect_name}")
    if expected.compute_capability and gpu.compute_capability != expected.compute_capability:
        problems.append(f"GPU {gpu.index} reports compute capability {gpu.compute_capability} ({gpu.architecture}), "
                        f"the config says {expected.compute_capability}"
                        + (f" ({expected.architecture})" if expected.architecture else ""))
    elif expected.architecture and gpu.architecture.split()[0] != expected.architecture.split()[0]:
        problems.append(f"GPU {gpu.index} is {gpu.architecture}, the config says {expected.architecture}")
    found = "; ".join(f"{g.index}: {g.name}, compute {g.compute_capability} ({g.architecture}), "
                      f"{gib(g.total_bytes)}" for g in ctx.gpus.gpus)
    if problems:
        return Result(WARN, f"{'; '.join(problems)} (found {found})",
                      "the device is what counts: update gpu: in the config to match it")
    return Result(PASS, found)


@check("vram", "free VRAM for the model vLLM will load", gpu=True)
def vram(ctx: DoctorContext) -> Result:
    if ctx.model in ctx.loaded.remote_model_names():
        return Result(SKIP, f"{ctx.model} is served elsewhere (upstream): it takes no VRAM here")
    gpu = ctx.gpus.gpus[0]
    plans = [p for p in ctx.plan.models if p.need_bytes and p.utilization]
    if not plans:
        return Result(SKIP, "no model with known size to check against")
    plan = next((p for p in plans if p.model == ctx.model), None) or max(plans, key=lambda p: p.utilization or 0)
    demand = int(gpu.total_bytes * plan.utilization)
    holders = ", ".join(f"{p.name} (pid {p.pid}, {p.used_bytes // MIB if p.used_bytes else '?'} MiB)"
                        for p in gpu.processes) or "no listed process"
    detail = (f"{gib(gpu.free_bytes)} free of {gib(gpu.total_bytes)}; {plan.model} at "
              f"gpu_memory_utilization {plan.utilization} makes vLLM demand {gib(demand)} at start")
    if gpu.free_bytes < demand:
        return Result(FAIL, f"{detail}; held by {holders}",
                      f"free VRAM (stop {holders}) or lower gpu_memory_utilization to "
                      f"{max(0.05, gpu.free_bytes / gpu.total_bytes - 0.01):.2f}")
    if plan.verdict != "fits":
        return Result(WARN, f"{detail}; but the plan says: {plan.summary}", plan.suggestion)
    return Result(PASS, detail)


# ------------------------------------------------------------------------ software rows

@check("python", "Python version")
def python_version(ctx: DoctorContext) -> Result:
    engine = ctx.env.python or "?"
    detail = f"animllm on {platform.python_version()}; engine interpreter {ctx.env.executable} is {engine}"
    if ctx.env.error:
        return Result(FAIL, ctx.env.error, "set engine.python to a working interpreter")
    if _version(engine) and _version(engine) < _version("3.10"):
        return Result(FAIL, detail, "vLLM needs Python 3.10 or newer")
    return Result(PASS, detail)


@check("torch", "PyTorch version and CUDA build vs the pins")
def torch(ctx: DoctorContext) -> Result:
    runtime = ctx.loaded.config.runtime
    installed = ctx.env.packages.get("torch")
    if not installed:
        return Result(FAIL, f"torch is not installed for {ctx.env.executable}",
                      f"pip install torch=={runtime.torch or '<version>'} --index-url "
                      f"https://download.pytorch.org/whl/cu{(runtime.cuda or '').replace('.', '')}")
    base, _, tag = installed.partition("+")
    problems = []
    if runtime.torch and base != runtime.torch:
        problems.append(f"torch {installed} installed, the config pins {runtime.torch}")
    if runtime.cuda:
        want = "cu" + runtime.cuda.replace(".", "")
        if tag == "cpu":
            problems.append("a CPU-only build: vLLM will not see the GPU")
        elif tag and tag != want:
            problems.append(f"built for {tag}, the pin is CUDA {runtime.cuda} ({want})")
    if problems:
        return Result(WARN, "; ".join(problems),
                      f"pip install torch=={runtime.torch} --index-url https://download.pytorch.org/whl/"
                      f"cu{(runtime.cuda or '').replace('.', '')}")
    return Result(PASS, f"torch {installed}")


@check("torch-cuda", "torch sees the GPU (--deep)")
def torch_cuda(ctx: DoctorContext) -> Result:
    if not ctx.deep:
        return Result(SKIP, "imports torch: run with --deep")
    from animllm_cli.engine.python_env import torch_cuda_status

    status = torch_cuda_status(ctx.env.executable)
    if isinstance(status, str):
        return Result(FAIL, f"import torch failed: {status}", "reinstall torch for the engine interpreter")
    if not status["available"]:
        return Result(FAIL, f"torch {status['version']} (CUDA build {status['cuda_build']}): "
                            f"torch.cuda.is_available() is False", "install a CUDA build of torch and the NVIDIA driver")
    return Result(PASS, f"torch {status['version']} sees {', '.join(status['devices'])}")


def _torch_requirement(env: PythonEnv, distribution: str):
    from packaging.requirements import InvalidRequirement, Requirement

    for text in env.requires.get(distribution, []):
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.name == "torch" and (requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
            return requirement
    return None


@check("vllm", "vLLM installed, and its torch requirement vs the installed and pinned torch")
def vllm(ctx: DoctorContext) -> Result:
    name = ctx.env.vllm_distribution
    pin = ctx.loaded.config.runtime.torch
    if name is None:
        hint = VLLM_FOR_TORCH.get(pin or "", "vllm")
        return Result(FAIL, f"vLLM is not installed for {ctx.env.executable}",
                      f"pip install '{hint}' (a release whose torch pin matches yours), or set engine.python")
    version = ctx.env.packages[name]
    requirement = _torch_requirement(ctx.env, name)
    detail = f"{name} {version}" + (f", requires torch{requirement.specifier}" if requirement else "")
    torch_version = ctx.env.packages.get("torch")
    if requirement and torch_version and not requirement.specifier.contains(torch_version, prereleases=True):
        return Result(FAIL, f"{detail}, but torch {torch_version} is installed",
                      f"reinstalling {name} would replace torch with one matching {requirement}; "
                      f"pick a vLLM release that matches the torch you keep")
    if requirement and pin and not requirement.specifier.contains(pin, prereleases=True):
        return Result(WARN, f"{detail}: installing or upgrading it would replace the pinned torch {pin}",
                      f"for torch {pin} use {VLLM_FOR_TORCH.get(pin, 'a vLLM release that pins it')}")
    return Result(PASS, detail)


@check("engine-flags", "every model's engine command valid for the installed vLLM (its release's flag table)")
def engine_flags(ctx: DoctorContext) -> Result:
    from animllm_cli.engine import vllm_releases
    from animllm_cli.engine.command import build_each
    from animllm_cli.errors import ConfigError

    name = ctx.env.vllm_distribution
    if name is None:
        return Result(SKIP, "no vLLM installed to check the commands against")
    version = ctx.env.packages[name]
    coverage = vllm_releases.tables().coverage(version)
    if not coverage.checked:
        return Result(WARN, coverage.reason, "vLLM itself judges the flags at start; "
                                             "`animllm config show MODEL --format args` prints the command")
    local = ctx.loaded.local_model_names()
    models = [m for m in _checked(ctx) if m in local]
    problems: list[str] = []
    notes: dict[str, None] = {}   # in order, once each
    for built in build_each(ctx.loaded, models, vllm_version=version).values():
        if isinstance(built, ConfigError):
            problems += built.problems
        else:
            notes.update(dict.fromkeys(vllm_releases.notes(coverage, list(built.env), built.argv)))
    if problems:
        return Result(FAIL, "; ".join(problems),
                      "change those settings, or check a model with: animllm config show MODEL --format args")
    quantization = [n for n in notes if n.startswith(vllm_releases.QUANTIZATION_OPTION)]
    detail = f"{len(models)} model(s), {coverage.reason} (tables {vllm_releases.tables().span})"
    if quantization:
        return Result(WARN, "; ".join([detail, *notes]), "use one of the release's methods, or install the plugin "
                                                         "that registers it")
    return Result(PASS, "; ".join([detail, *notes]))


@check("forbidden", "forbidden packages absent")
def forbidden(ctx: DoctorContext) -> Result:
    names = ctx.loaded.config.runtime.forbid_packages
    installed = [n for n in names if n in ctx.env.packages]  # the probe was asked for each of them
    if installed:
        return Result(FAIL, f"installed: {', '.join(f'{n} {ctx.env.packages[n]}' for n in installed)}",
                      f"{ctx.env.executable} -m pip uninstall -y {' '.join(installed)}")
    return Result(PASS, f"none of {', '.join(names)} installed" if names else "nothing forbidden")


@check("env", "environment variables for the engine")
def environment(ctx: DoctorContext) -> Result:
    from animllm_cli.config.engine_env import engine_environment
    from animllm_cli.engine.python_env import vllm_known_env_vars

    wanted, _ = engine_environment(ctx.loaded)
    known = vllm_known_env_vars(ctx.env.vllm_dir)
    warnings, fixes = [], []
    for var in ctx.loaded.config.env:
        value = wanted.get(var)
        shell = ctx.process_env.get(var)
        if shell is not None and value is not None and shell != value:
            warnings.append(f"{var}: your shell has {shell!r}, the engine gets {value!r}")
        if known is not None and var.startswith("VLLM_") and var not in known:
            version = ctx.env.packages.get(ctx.env.vllm_distribution or "", "")
            warnings.append(f"{var} is unknown to the installed vLLM {version} and is ignored")
            fixes.append(f"replace {var} with {REPLACED_ENV.get(var, 'the matching flag, see `vllm serve --help`')}")
    detail = f"{len(wanted)} variables set for the engine ({', '.join(wanted)})"
    if warnings:
        return Result(WARN, "; ".join(warnings), "; ".join(fixes) or "unset the shell variable or change env: in the config")
    return Result(PASS, detail)


@check("attention-backend", "attention backend valid for the installed vLLM (--deep)")
def attention_backend(ctx: DoctorContext) -> Result:
    value = ctx.loaded.config.env.get("VLLM_ATTENTION_BACKEND") or \
        next((str(v) for m in ctx.loaded.config.models.values() for k, v in m.extra_args.items()
              if k.lstrip("-").replace("_", "-") == "attention-backend"), None)
    if not value:
        return Result(PASS, "not set: vLLM picks the backend")
    if not ctx.deep:
        return Result(SKIP, f"{value} is set; --deep asks the installed vLLM whether it knows it")
    from animllm_cli.engine.python_env import vllm_attention_backends

    names = vllm_attention_backends(ctx.env.executable)
    if names is None:
        return Result(WARN, "could not read the backend list from the installed vLLM", "is vLLM installed?")
    if value not in names:
        return Result(FAIL, f"{value} is not a backend of the installed vLLM (it has: {', '.join(names)})",
                      "pick one of those, or leave it unset")
    if value == "TORCH_SDPA" and ctx.gpus.gpus:
        return Result(WARN, "TORCH_SDPA is a CPU backend; vLLM on CUDA rejects it (vllm#14320)",
                      "use FLASH_ATTN or leave it unset")
    return Result(PASS, f"{value} is one of the installed vLLM's {len(names)} backends")


# ------------------------------------------------------------------------------ sleep mode

def _checked(ctx: DoctorContext) -> list[str]:
    """The models the per-model rows are about: `--model`'s, else all of them."""
    return [ctx.model] if ctx.model else ctx.loaded.model_names()


def _sleepy(ctx: DoctorContext) -> list[str]:
    """The local models checked whose `sleep` is not off (a remote model is never evicted here)."""
    local = ctx.loaded.local_model_names()
    return [n for n in _checked(ctx) if n in local and ctx.loaded.config.models[n].sleep != "off"]


@check("sleep", "vLLM sleep mode on this platform and vLLM version (evictions in seconds)")
def sleep_mode(ctx: DoctorContext) -> Result:
    from animllm_cli.engine import sleep

    sleepy = _sleepy(ctx)
    if not sleepy:
        return Result(SKIP, "sleep: off for every model: an evicted engine is stopped" if ctx.plan.models else
                      "no model checked runs here: each is served elsewhere (upstream)")
    support = ctx.sleep_support
    asked = [n for n in sleepy if ctx.loaded.config.models[n].sleep in (1, 2)]
    if not support.available:
        detail = f"unavailable: {support.reason}; an evicted engine is stopped"
        if asked:
            return Result(WARN, f"{detail}, though {', '.join(asked)} set sleep: 1 or 2",
                          "run on a CUDA build of vLLM, or set sleep: auto (or off)")
        return Result(SKIP, detail)
    level_2 = sleep.level_2_wakes(support.vllm_version)
    old_2 = [n for n in asked if ctx.loaded.config.models[n].sleep == 2 and not level_2]
    if old_2:
        return Result(WARN, f"{support.reason}, but {', '.join(old_2)} set sleep: 2 and this vLLM cannot reload "
                            f"weights after a level-2 sleep (needs {sleep.LEVEL_2_VERSION}+): they are stopped instead",
                      f"use sleep: 1 or auto, or vLLM {sleep.LEVEL_2_VERSION} or newer")
    return Result(PASS, f"{support.reason}: level 1 (weights to host RAM)"
                        + (", level 2 (weights reloaded on wake)" if level_2 else
                           f"; level 2 needs vLLM {sleep.LEVEL_2_VERSION}+"))


@check("sleep-ram", "host RAM for the models that may sleep at level 1")
def sleep_ram(ctx: DoctorContext) -> Result:
    support = ctx.sleep_support
    plans = {p.model: p for p in ctx.plan.models}
    level_1 = [n for n in _sleepy(ctx) if ctx.loaded.config.models[n].sleep in ("auto", 1) and n in plans]
    if not support.available or not level_1:
        return Result(SKIP, "no model can sleep at level 1 here" if level_1 or not support.available
                      else "no model allows level 1")
    unknown = [n for n in level_1 if plans[n].weight_bytes is None]
    # Every one of them may hold its weights in host RAM at once: while asleep, and after a
    # wake too (vllm#16663: vLLM keeps that host memory for the next sleep).
    need = sum(plans[n].weight_bytes or 0 for n in level_1)
    margin = int(ctx.loaded.config.pool.sleep_ram_margin_gib * GIB)
    room = ctx.host_available() - margin
    detail = (f"{', '.join(level_1)}: {gib(need)} of weights; {gib(room)} of host RAM free beyond "
              f"the {ctx.loaded.config.pool.sleep_ram_margin_gib:g} GiB margin (pool.sleep_ram_margin_gib)")
    if unknown:
        detail += f"; weights unknown for {', '.join(unknown)} (they sleep at level 2 or stop)"
    if need > room:
        return Result(WARN, f"{detail}: not all fit, so some sleep at level 2 (weights reloaded from disk) or stop",
                      "free host RAM, lower pool.sleep_ram_margin_gib, or set sleep: 2 on the large models")
    return Result(PASS, detail)


@check("sleep-known-bad", "sleep mode: combinations vLLM's issue tracker reports broken")
def sleep_known_bad(ctx: DoctorContext) -> Result:
    from animllm_cli.engine import sleep

    support = ctx.sleep_support
    if not support.available:
        return Result(SKIP, "sleep mode is unavailable here")
    applies: dict[str, list[str]] = {}
    avoided: dict[str, list[str]] = {}
    for name in _sleepy(ctx):
        setting = ctx.loaded.config.models[name].sleep
        levels = [1, 2] if setting == "auto" else [setting]
        quantization = model_quantization(ctx.loaded, name)
        for bad in {b for level in levels for b in sleep.known_bad(support.vllm_version, level, quantization)}:
            found = avoided if bad.avoid and setting == "auto" else applies
            found.setdefault(f"{bad.issue}: {bad.summary}", []).append(name)

    def listed(found: dict[str, list[str]]) -> str:
        return "; ".join(f"{', '.join(models)}: {issue}" for issue, models in sorted(found.items()))
    steered = f"sleep: auto steers clear of {listed(avoided)}" if avoided else ""
    if applies:
        return Result(WARN, listed(applies) + (f"; {steered}" if steered else ""),
                      "see the issues; set sleep: auto, 1 or off on the models concerned, or pick another vLLM release")
    return Result(PASS, steered or f"none known for vLLM {support.vllm_version} and these models")


@check("paths", "cache directories writable, with free disk")
def paths(ctx: DoctorContext) -> Result:
    section = ctx.loaded.config.paths
    problems, details = [], []
    for key in ("models", "hf_cache", "vllm_cache", "torch_cache"):
        raw = getattr(section, key)
        if not raw:
            continue
        path = Path(raw)
        existing = next((p for p in [path, *path.parents] if p.exists()), Path("/"))
        free = shutil.disk_usage(existing).free
        writable = os.access(existing, os.W_OK)
        if not writable:
            problems.append(f"{key} {path}: {existing} is not writable")
        elif free < 20 * GIB:
            problems.append(f"{key} {path}: only {gib(free)} free on its disk")
        details.append(f"{key} {path}{'' if path.exists() else ' (will be created)'}, {gib(free, 0)} free")
    if problems:
        return Result(WARN if all("free" in p for p in problems) else FAIL, "; ".join(problems),
                      "point paths: at a writable disk with room for the models (a 14B AWQ is ~10 GB)")
    return Result(PASS, "; ".join(details) or "no paths configured")


@check("models", "model sources resolvable")
def model_sources(ctx: DoctorContext) -> Result:
    if not ctx.plan.models:  # the plan holds the local models checked only
        return Result(SKIP, "no model checked runs here: each is served elsewhere (upstream)")
    missing_local, downloads, found = [], [], []
    for plan in ctx.plan.models:
        source = plan.source
        if source.startswith("/") and not Path(source).is_dir():
            missing_local.append(f"{plan.model}: {source} does not exist")
        elif plan.weights_present:
            found.append(f"{plan.model} ({gib(plan.checkpoint_bytes or 0)})")
        else:
            size = f", ~{gib(plan.checkpoint_bytes)}" if plan.checkpoint_bytes else ""
            downloads.append(f"{plan.model} ({source}{size})")
    if missing_local:
        return Result(FAIL, "; ".join(missing_local), "fix `source:` or copy the model there")
    if downloads:
        return Result(WARN, f"will be downloaded on first start: {', '.join(downloads)}"
                            + (f"; present: {', '.join(found)}" if found else ""),
                      "download them now with `animllm pull` (resumable), so a first start or switch does not wait for them")
    return Result(PASS, f"all present: {', '.join(found)}")


@check("upstreams", "remote models' servers answer, take the key and serve the model")
def upstreams(ctx: DoctorContext) -> Result:
    remote = ctx.loaded.remote_model_names()
    names = [n for n in _checked(ctx) if n in remote]
    if not names:
        return Result(SKIP, f"{ctx.model} runs here: no remote model checked" if remote else
                      "no model is served elsewhere (upstream:)")
    results = [_remote_model(ctx, name) for name in names]
    status = next((s for s in (FAIL, WARN) if any(r.status == s for r in results)), PASS)
    fixes = list(dict.fromkeys(r.fix for r in results if r.fix and r.status != PASS))
    return Result(status, "; ".join(r.detail for r in results), "; ".join(fixes) or None)


def _remote_model(ctx: DoctorContext, name: str) -> Result:
    """One remote model: its key's variable, its CA bundle, then every URL probed at once
    (client/upstream.probe: the gateway's own health check). Never prints the key."""
    import asyncio

    from animllm_cli.client.upstream import MissingKey, tls_setting, upstream_key

    spec = ctx.loaded.config.models[name].upstream
    try:
        key = upstream_key(spec, ctx.process_env)
    except MissingKey as exc:
        return Result(FAIL, f"{name}: {exc}", f"export {spec.api_key_env}=<the server's key> where animllm runs")
    try:
        tls = tls_setting(spec)
    except OSError as exc:  # ssl.SSLError is one too: a file that is not PEM certificates
        return Result(FAIL, f"{name}: models.{name}.upstream.ca_bundle {spec.ca_bundle} cannot be read: "
                            f"{getattr(exc, 'strerror', None) or exc}",
                      f"point models.{name}.upstream.ca_bundle at a readable PEM file of CA certificates")
    probes = asyncio.run(_probe_urls(spec, spec.model or name, key, tls))
    return _judge_remote(name, spec, probes)


async def _probe_urls(spec: UpstreamSpec, served_name: str, key: str | None, tls) -> list[Probe]:
    from animllm_cli.client.upstream import http_client, probe_all

    async with http_client(tls) as client:  # the gateway's health checks' own client and probe
        return await probe_all(client, spec, served_name, key)


def _judge_remote(name: str, spec: UpstreamSpec, probes: list[Probe]) -> Result:
    from animllm_cli.client.upstream import sends_key_in_clear

    failed = [p for p in probes if not p.ok]
    if failed:
        return Result(FAIL, "; ".join(f"{name}: {p.url} {p.problem}" for p in failed),
                      f"start the server, or fix models.{name}.upstream (urls, model, api_key_env); "
                      f"GET <url>/v1/models lists what a server serves")
    detail = f"{name}: " + ", ".join(f"{p.url} answers in {p.seconds * 1000:.0f} ms" for p in probes)
    clear = [url for url in spec.urls if sends_key_in_clear(spec, url)]
    if clear:
        return Result(WARN, f"{detail}; but the key in {spec.api_key_env} goes over plain http to "
                            f"{', '.join(clear)}, readable on the network path",
                      f"use https:// in models.{name}.upstream.urls for a server on another host")
    return Result(PASS, detail)


@check("port", "gateway port free")
def port(ctx: DoctorContext) -> Result:
    from animllm_cli.bind import bind_error

    server = ctx.loaded.config.server
    problem = bind_error(server.host, server.port)
    if problem:
        return Result(FAIL, f"{server.host}:{server.port} is taken ({problem}){_port_owner(server.port)}",
                      "stop what holds it, or set server.port (ANIMLLM_SERVER__PORT)")
    return Result(PASS, f"{server.host}:{server.port} is free")


def _port_owner(number: int) -> str:
    import psutil

    try:
        for conn in psutil.net_connections("inet"):
            if conn.laddr and conn.laddr.port == number and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f" by pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


@check("ulimit", "open-file limit")
def open_files(ctx: DoctorContext) -> Result:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    detail = f"soft {soft}, hard {hard}"
    if hard != resource.RLIM_INFINITY and hard < 65536:
        return Result(WARN, f"{detail}: many concurrent streams need more file descriptors",
                      "raise it: `ulimit -n 65536` (or nofile in /etc/security/limits.conf)")
    return Result(PASS, f"{detail} (vLLM raises the soft limit itself)")

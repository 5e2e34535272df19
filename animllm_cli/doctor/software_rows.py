"""The software rows: Python, torch, vLLM and its flags, forbidden packages, the engine's
environment and attention backend."""

from __future__ import annotations

import platform

from animllm_cli.engine.python_env import PythonEnv
from animllm_cli.doctor.registry import (FAIL, PASS, REPLACED_ENV, SKIP, VLLM_FOR_TORCH, WARN,
                                         DoctorContext, Result, check, checked_models, version)


@check("python", "Python version")
def python_version(ctx: DoctorContext) -> Result:
    engine = ctx.env.python or "?"
    detail = f"animllm on {platform.python_version()}; engine interpreter {ctx.env.executable} is {engine}"
    if ctx.env.error:
        return Result(FAIL, ctx.env.error, "set engine.python to a working interpreter")
    if version(engine) and version(engine) < version("3.10"):
        return Result(FAIL, detail, "vLLM needs Python 3.10 or newer")
    return Result(PASS, detail)


@check("torch", "PyTorch version and CUDA build vs the pins", needs=("python",))
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


@check("torch-cuda", "torch sees the GPU (--deep)", needs=("driver", "torch"))
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


@check("vllm", "vLLM installed, and its torch requirement vs the installed and pinned torch", needs=("python",))
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


@check("engine-flags", "every model's engine command valid for the installed vLLM (its release's flag table)",
       needs=("python",))
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
    models = [m for m in checked_models(ctx) if m in local]
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


@check("forbidden", "forbidden packages absent", needs=("python",))
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


@check("attention-backend", "attention backend valid for the installed vLLM (--deep)", needs=("vllm",))
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

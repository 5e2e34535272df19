"""The GPU rows: the driver, its CUDA, the card and the VRAM the model needs."""

from __future__ import annotations

from animllm_cli.units import MIB, gib
from animllm_cli.doctor.registry import FAIL, PASS, SKIP, WARN, DoctorContext, Result, check, version


@check("driver", "NVIDIA driver reachable (NVML)")
def driver(ctx: DoctorContext) -> Result:
    report = ctx.gpus
    if report.error:
        return Result(FAIL, report.error, "install the NVIDIA driver, then check `nvidia-smi`")
    if not report.gpus:
        return Result(FAIL, "the driver answers but lists no GPU", "check `nvidia-smi`; in a container pass --gpus")
    return Result(PASS, f"driver {report.driver_version}, {len(report.gpus)} GPU(s)")


@check("cuda", "driver's CUDA version vs the CUDA pin", needs=("driver",))
def cuda(ctx: DoctorContext) -> Result:
    pin = ctx.loaded.config.runtime.cuda
    have = ctx.gpus.cuda_driver_version
    if not pin:
        return Result(PASS, f"driver supports CUDA {have} (no pin configured)")
    if version(have) < version(pin):
        return Result(FAIL, f"driver supports CUDA {have}; the pinned CUDA {pin} build of torch needs a newer driver",
                      f"update the NVIDIA driver to one that supports CUDA {pin}")
    return Result(PASS, f"driver supports CUDA {have} >= pinned {pin}")


@check("gpu", "GPU model and compute capability", needs=("driver",))
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


@check("vram", "free VRAM for the model vLLM will load", needs=("driver",))
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

"""The sleep-mode rows: whether evicted engines can sleep here, the host RAM level-1
sleepers take, and combinations vLLM's tracker reports broken."""

from __future__ import annotations


from animllm_cli.units import GIB, gib
from animllm_cli.gpu.planner import model_quantization
from animllm_cli.doctor.registry import PASS, SKIP, WARN, DoctorContext, Result, check, checked_models


def _sleepy(ctx: DoctorContext) -> list[str]:
    """The local models checked whose `sleep` is not off (a remote model is never evicted here)."""
    local = ctx.loaded.local_model_names()
    return [n for n in checked_models(ctx) if n in local and ctx.loaded.config.models[n].sleep != "off"]


@check("sleep", "vLLM sleep mode on this platform and vLLM version (evictions in seconds)", needs=("python",))
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


@check("sleep-ram", "host RAM for the models that may sleep at level 1", needs=("sleep",))
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


@check("sleep-known-bad", "sleep mode: combinations vLLM's issue tracker reports broken", needs=("sleep",))
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

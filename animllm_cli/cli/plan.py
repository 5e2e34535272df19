"""`animllm plan`: will each model fit in VRAM, and what would make it fit."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from animllm_cli.cli import common

VERDICT_STYLE = {"fits": "green", "fits-partially": "yellow", "does-not-fit": "bold red", "unknown": "dim"}


def plan(
    ctx: typer.Context,
    models: Annotated[Optional[list[str]], typer.Argument(metavar="MODEL", help="Models to plan (default: all).", show_default=False,
                                                        autocompletion=common.complete_models)] = None,
    vram: Annotated[Optional[float], typer.Option("--vram", min=0.5, metavar="GiB",
                                                  help="Plan for a card of this size (default: the detected GPU, else gpu.vram_gib).")] = None,
    together: Annotated[Optional[str], typer.Option("--together", metavar="A,B[,C]", show_default=False,
                                                    help="Whether these models fit at once, and with which shares.")] = None,
    gpu_memory_utilization: common.GpuUtilOption = None,
    max_model_len: common.MaxModelLenOption = None,
    sets: common.SetOption = None,
    json_output: common.JsonOption = False,
    config: common.ConfigOption = None,
) -> None:
    """Whether each model fits in VRAM, and how to make it fit.

    Per model: weights, KV bytes per token, the KV tokens that fit, a verdict and a fix.

    Exit 0 when every planned model fits at its max_model_len (with --together: when the
    set fits at once), 1 otherwise.
    """
    from animllm_cli.errors import UsageError
    from animllm_cli.gpu.nvml import GpuReport, probe
    from animllm_cli.gpu.planner import cards_now, plan_models, plan_together, vram_basis

    out = common.output(ctx)
    loaded = common.load(ctx, config, common.model_overrides(
        sets, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len))
    gpus = GpuReport() if vram else probe()
    if together is not None:
        wanted = [loaded.catalogue.resolve(m.strip()) for m in together.split(",") if m.strip()]
        if len(wanted) < 2 or models:
            raise UsageError("--together takes two or more models, A,B[,C], and no model arguments",
                             hint="animllm plan --together coder,vision")
        _no_remote(loaded, wanted)
        cards, basis = cards_now(loaded, gpus, vram)
        result = plan_together(loaded, list(dict.fromkeys(wanted)), cards, basis)
        out.result(result, lambda r: out.show(together_table(r)), json=json_output)
        raise typer.Exit(0 if result.fits else 1)
    names = [loaded.catalogue.resolve(m) for m in models] if models else loaded.model_names()
    size, basis = vram_basis(loaded, gpus, vram)
    report = plan_models(loaded, list(dict.fromkeys(names)), size, basis)
    _add_startup_estimates(loaded, report)
    out.result(report, lambda r: show_plan(out, r), json=json_output)
    raise typer.Exit(0 if all(m.verdict == "fits" for m in report.models) else 1)


def _add_startup_estimates(loaded, report) -> None:
    """What a cold switch to each model costs, where `bench --startup` measured it with the
    command the config builds now; an older measurement is named, not shown as current."""
    from animllm_cli.bench.startup import read_estimates
    from animllm_cli.engine.command import build_engine_command
    from animllm_cli.errors import ConfigError

    estimates = read_estimates()
    for m in report.models:
        estimate = estimates.get(m.model)
        if estimate is None:
            continue
        try:
            command = build_engine_command(loaded, loaded.model(m.model))
        except ConfigError:
            continue
        if estimate.matches(command):
            m.startup = {"ready_s": estimate.ready_s, "to_first_answer_s": estimate.total_s, "cache": estimate.cache,
                         "launched_by": estimate.launched_by, "slowest_phase": estimate.slowest_phase,
                         "runs": estimate.runs, "measured_at": estimate.measured_at}
        else:
            m.notes.append(f"start-up measured {estimate.measured_at} with another engine command: "
                           f"`animllm bench --startup {m.model}` measures it again")


def _no_remote(loaded, names: list[str]) -> None:
    """--together places engines on this machine's cards: a model served elsewhere has none."""
    from animllm_cli.errors import UsageError

    remote = [name for name in names if loaded.config.models[name].remote]
    if remote:
        raise UsageError(f"--together: {', '.join(remote)} {'is' if len(remote) == 1 else 'are'} served elsewhere "
                         f"(upstream) and take{'s' if len(remote) == 1 else ''} no VRAM here",
                         hint="leave the remote models out of --together")


def show_plan(out, report) -> None:
    """The fit table, then for each model what does not fit and how to fix it; the models
    served elsewhere get a line each instead of a row."""
    from animllm_cli.output import joined, lines_below, styled

    if report.models or not report.remote:
        out.show(plan_table(report))
    for m in report.models:
        lines = ([m.summary] if m.verdict != "fits" else []) + m.notes
        lines += [joined(styled("fix:", "bold"), f" {m.suggestion}")] if m.suggestion else []
        lines += [joined(styled("or:", "dim"), f" {alt}") for alt in m.alternatives]
        if lines:  # the model's name, then each line indented under it
            out.show(lines_below(styled(m.model, "bold")))
            out.show(lines_below(*lines, indent=2))
    if report.co_resident:
        shares = report.shares
        out.show(lines_below("could stay loaded together (each at its share of the card): " + "; ".join(
            " + ".join(f"{m} ({shares[m].utilization:g})" for m in g) for g in report.co_resident)))
    for r in report.remote:
        out.show(lines_below(styled(r.model, "bold")))
        out.show(lines_below(f"remote: served by {', '.join(r.urls)}, no VRAM here", indent=2))


def together_table(report):
    from animllm_cli.output import joined, styled, table
    from animllm_cli.units import gib, gib_figure

    rows = [[p.model, "does not fit" if p.gpus is None else ", ".join(map(str, p.gpus)), f"{p.utilization:g}",
             gib_figure(p.bytes_per_gpu), {"share": "config share", "smallest": "smallest that holds max_model_len",
                                           "alone": "its own utilization (runs alone)"}[p.basis]]
            for p in report.placements]
    rooms = ", ".join(f"GPU {c.index}: {gib_figure(c.room_bytes)} of {gib(c.total_bytes)}" for c in report.cards)
    verdict = styled("fits", "green") if report.fits else styled("does not fit", "bold red")
    title = joined(f"Together on {report.card_basis} ({rooms} free below the threshold): ", verdict,
                   f" — {report.summary}")
    return table(title, ["model", "GPU", "share", "GiB per GPU", "share from"], rows, no_wrap=("model", "share"))


def plan_table(report):
    from animllm_cli.output import styled, table
    from animllm_cli.units import gib, gib_figure

    def figure(value):
        return "?" if value is None else gib_figure(value)

    rows = []
    for m in report.models:
        verdict = {"fits": "fits", "fits-partially": f"fits up to {m.kv_tokens or 0:,}",
                   "does-not-fit": "does not fit", "unknown": "unknown"}[m.verdict]
        rows.append([m.model, m.utilization or "?", figure(m.weight_bytes),
                     "?" if m.kv_bytes_per_token is None else f"{m.kv_bytes_per_token // 1024}",
                     figure(m.kv_pool_bytes), "?" if m.kv_tokens is None else f"{m.kv_tokens:,}",
                     "?" if m.max_model_len is None else f"{m.max_model_len:,}",
                     styled(verdict, VERDICT_STYLE[m.verdict])])
    title = f"VRAM plan for {gib(report.vram_bytes)} ({report.vram_basis})"
    columns = ["model", "util", "weights GiB", "KV KiB/tok", "KV pool GiB", "KV tokens", "max len", "verdict"]
    if any(m.startup for m in report.models):  # measured start-ups only: no column of "?" before any
        columns.insert(-1, "cold start s")
        for row, m in zip(rows, report.models):
            row.insert(-1, f"{m.startup['to_first_answer_s']:.1f}" if m.startup else "?")
    return table(title, columns, rows, no_wrap=("model", "util", "KV tokens", "max len"),
                 below=("KV KiB/tok", "KV pool GiB", "weights GiB"))

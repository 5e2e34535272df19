"""`animllm doctor`: the preflight checklist for a terminal, a script or a CI job."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from animllm_cli.cli import common

STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red", "SKIP": "dim"}


def _ids(values: Optional[list[str]]) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def doctor(
    ctx: typer.Context,
    json_output: common.JsonOption = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on WARN too.")] = False,
    deep: Annotated[bool, typer.Option("--deep", help="Also import torch and vLLM (seconds) for the checks that need it.")] = False,
    only: Annotated[Optional[list[str]], typer.Option("--only", metavar="ID[,ID]", help="Run only these checks.")] = None,
    skip: Annotated[Optional[list[str]], typer.Option("--skip", metavar="ID[,ID]", help="Skip these checks.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="MODEL", help="Check VRAM for this model (default: the most demanding).")] = None,
    config: common.ConfigOption = None,
) -> None:
    """The preflight checklist: GPU, software, sleep mode, host.

    Each row is PASS, WARN, FAIL or SKIP, with a fix unless it passes; a row that needs
    another (the GPU rows the driver) is SKIP, naming it, when that one FAILs.
    Exit 0 when nothing FAILs (WARN too with --strict), 1 when something does, 2 for usage or config errors.
    """
    from animllm_cli.doctor.runner import run_doctor

    out = common.output(ctx)
    loaded = common.load(ctx, config)
    report = run_doctor(loaded, only=_ids(only), skip=_ids(skip), deep=deep, strict=strict, model=model)
    out.result(report, lambda r: _render(out, r), json=json_output)
    raise typer.Exit(report.exit_code)


def _render(out, report) -> None:
    from animllm_cli.cli.plan import show_plan
    from animllm_cli.output import styled, table
    from animllm_cli.units import MIB, gib_figure

    rows = [[c.id, styled(c.status, STYLE[c.status]), c.detail] for c in report.checks]
    out.show(table("Checks", ["check", "status", "detail"], rows, no_wrap=("check", "status")))
    out.show(_fixes(report.checks))  # under the table: a fix in the detail column would narrow it
    if report.gpus.gpus:
        gpu_rows = [[g.index, g.name, f"{g.compute_capability} ({g.architecture})", gib_figure(g.total_bytes),
                     gib_figure(g.used_bytes), gib_figure(g.free_bytes)] for g in report.gpus.gpus]
        out.show(table(f"GPUs (driver {report.gpus.driver_version}, CUDA {report.gpus.cuda_driver_version})",
                       ["#", "name", "compute", "total GiB", "used GiB", "free GiB"], gpu_rows))
        proc_rows = [[g.index, p.pid, p.name, p.used_bytes // MIB if p.used_bytes is not None else "?"]
                     for g in report.gpus.gpus for p in g.processes]
        if proc_rows:
            out.show(table("Processes holding VRAM", ["gpu", "pid", "name", "MiB"], proc_rows))
    if any(c.id == "vram" for c in report.checks):  # the fit table belongs with the VRAM row
        show_plan(out, report.plan)
    summary = report.to_json()["summary"]
    out.info(f"{summary['pass']} passed, {summary['warn']} warnings, {summary['fail']} failed, "
             f"{summary['skip']} skipped in {summary['elapsed_s']:.2f}s")


def _fixes(checks):
    """The fix of each check that has one, a line each."""
    from animllm_cli.output import joined, lines_below, styled

    return lines_below(*(joined(styled(f"fix {c.id}:", "bold"), f" {c.fix}") for c in checks if c.fix))

"""`animllm bench`: TTFT, TPOT, ITL, E2EL and throughput against the gateway (or any
OpenAI-compatible --url), model switch times, and a CI gate on the config's expectations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from animllm_cli.cli import common

if TYPE_CHECKING:
    from animllm_cli.bench.results import BenchResult


def _levels(text: str) -> list[int]:
    return _sweep("--concurrency", text, int, "numbers like 1,4,10", minimum=1)


def _rates(text: str | None) -> list[float]:
    return _sweep("--request-rate", text, float, "requests per second like 2 or 0.5,1,2", minimum=0.01) if text else []


def _sweep(option: str, text: str, kind, example: str, *, minimum: float) -> list:
    from animllm_cli.errors import UsageError

    try:
        levels = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected {example}") from None
    if not levels or any(level < minimum for level in levels):
        raise UsageError(f"{option} {text!r}: each level must be at least {minimum:g}")
    return levels


def bench(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Argument(help="Model to measure (default: default_model).", show_default=False,
                                                   autocompletion=common.complete_models)] = None,
    concurrency: Annotated[str, typer.Option("--concurrency", "-c", help="Levels to sweep, e.g. 1,4,10,32.")] = "1",
    request_rate: Annotated[Optional[str], typer.Option("--request-rate", metavar="R[,R…]", show_default=False,
                                                        help="Poisson arrivals per second instead of fixed concurrency; "
                                                             "a list sweeps them, e.g. 0.5,1,2.")] = None,
    requests: Annotated[int, typer.Option("--requests", "-n", min=1, help="Requests per level.")] = 20,
    input_len: Annotated[int, typer.Option("--input-len", min=1, help="Prompt length in the model's tokens.")] = 128,
    output_len: Annotated[int, typer.Option("--output-len", min=1, help="Tokens generated per request (ignore_eos).")] = 64,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Requests sent first and not counted.")] = 2,
    switch: Annotated[Optional[str], typer.Option("--switch", metavar="A,B[,C]", help="Also time switches between these models.")] = None,
    switch_rounds: Annotated[int, typer.Option("--switch-rounds", min=1, help="Times to go round the --switch models.")] = 2,
    json_path: Annotated[Optional[Path], typer.Option("--json", metavar="PATH", help="Write the results as JSON ('-': stdout).")] = None,
    samples: Annotated[bool, typer.Option("--samples", help="Include every request's timings in --json.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 when a result misses the config's expectations.")] = False,
    url: Annotated[Optional[str], typer.Option("--url", help="Any OpenAI-compatible server instead of the gateway.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE", show_default=False,
                                                 help="Draw the results into FILE.png or FILE.svg (needs the extra animllm-cli\\[plot]).")] = None,
    compare: Annotated[Optional[tuple[Path, Path]], typer.Option(
        "--compare", metavar="A.json B.json", show_default=False,
        help="Show two saved runs (bench --json) side by side, B/A; runs nothing.")] = None,
    config: common.ConfigOption = None,
) -> None:
    """Measure what the backend serves, the way vLLM's serving benchmark measures it."""
    import asyncio
    import os

    out = common.output(ctx)
    if plot is not None:
        from animllm_cli.bench.plot import check_plot_path

        check_plot_path(plot)
    if compare is not None:
        _compare(ctx, out, compare, plot, json_path)
        return

    from animllm_cli.bench.runner import BenchPlan, run_bench

    loaded = common.load(ctx, config)
    resolve = common.model_resolver(loaded, url=url)
    name = resolve(model)[0]
    switch_models = [resolve(m.strip())[0] for m in switch.split(",")] if switch else []
    if switch and len(switch_models) < 2:
        from animllm_cli.errors import UsageError

        raise UsageError("--switch needs at least two models, e.g. --switch coder,vision")
    if not url:  # the gateway's models are the config's; another server's are not ours to judge
        _loaded_here(loaded, switch_models)
    rates = _rates(request_rate)
    plan = BenchPlan(url=url or common.gateway_url(loaded), model=name, levels=[] if rates else _levels(concurrency),
                     request_rates=rates, requests=requests, input_len=input_len, output_len=output_len,
                     warmup=warmup, switch_models=switch_models, switch_rounds=switch_rounds,
                     api_key=os.environ.get(loaded.config.server.api_key_env))
    expectation = _expectation(loaded, name) if check else None  # fail before the run, not after
    result = asyncio.run(run_bench(plan, out))
    if check:
        from animllm_cli.bench.expectations import check as compare

        result.check = compare(expectation, result.levels, result.switch)
    report = result if samples else result.without_samples()
    _emit(out, report, _render, json_path, "results")
    if plot is not None:
        _plot(out, plot, [(result.model, report.to_json())])
    if result.check is not None and not all(row.ok for row in result.check):
        raise typer.Exit(1)


# What runs a benchmark; none of it applies to --compare, which reads two saved runs.
RUN_OPTIONS = ("model", "concurrency", "request_rate", "requests", "input_len", "output_len", "warmup", "switch",
               "switch_rounds", "samples", "check", "url")


def _compare(ctx: typer.Context, out, files: tuple[Path, Path], plot: Path | None, json_path: Path | None) -> None:
    from animllm_cli.bench.compare import compare, read_saved
    from animllm_cli.errors import UsageError

    # By the source's name: Typer may bring its own copy of click, with its own enum.
    given = [name for name in RUN_OPTIONS if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"]
    if given:
        raise UsageError(f"--compare reads two saved runs and runs nothing: drop {', '.join(given)}")
    (a_path, a), (b_path, b) = ((path, read_saved(path)) for path in files)
    comparison = compare(a_path, a, b_path, b)
    _emit(out, comparison, _render_comparison, json_path, "comparison")
    if plot is not None:
        _plot(out, plot, [(a_path.stem, a), (b_path.stem if b_path.stem != a_path.stem else str(b_path), b)])


def _emit(out, data, render, json_path: Path | None, what: str) -> None:
    """`--json -`: stdout carries the JSON alone; otherwise the tables, and the file if asked."""
    out.result(data, lambda d: render(out, d), json=str(json_path) == "-")
    if json_path is not None and str(json_path) != "-":
        from animllm_cli.output import json_text

        json_path.write_text(json_text(data) + "\n")
        out.info(f"{what} written to {json_path}")


def _plot(out, path: Path, runs) -> None:
    from animllm_cli.bench.plot import write_plot

    write_plot(path, runs)
    out.info(f"plot written to {path}")


def _render_comparison(out, comparison) -> None:
    from animllm_cli.bench.compare import cell
    from animllm_cli.output import plain, table

    a, b = f"A {comparison.a}", f"B {comparison.b}"
    for level in comparison.levels:
        rows = [[row.metric, cell(row.a, row.format), cell(row.b, row.format), cell(row.ratio, "{:.3f}")]
                for row in level.rows]
        out.show(table(f"{level.level}", ["", a, b, "B/A"], rows))
    if comparison.switch:
        rows = [[row.metric, cell(row.a, "{:.2f}"), cell(row.b, "{:.2f}"), cell(row.ratio, "{:.3f}")]
                for row in comparison.switch]
        out.show(table("Switches, seconds", ["", a, b, "B/A"], rows))
    for note in comparison.notes:
        out.info(f"note: {plain(note)}")


def _loaded_here(loaded, models: list[str]) -> None:
    """--switch times loads, and a model served elsewhere (`upstream`) is never loaded here:
    refused before anything is sent."""
    from animllm_cli.errors import UsageError

    for name in models:
        spec = loaded.config.models.get(name)
        if spec is not None and spec.remote:
            raise UsageError(f"bench --switch measures loads; '{name}' is served elsewhere",
                             hint=f"measure its requests without --switch: animllm bench {name}")


def _expectation(loaded, name: str):
    from animllm_cli.errors import UsageError

    spec = loaded.config.models.get(name)
    profile = spec.profile if spec else None
    expectation = loaded.config.expectations.get(profile) if profile else None
    if expectation is None and spec is not None and spec.remote and not profile:
        raise UsageError(f"--check: '{name}' is served elsewhere and has no profile; expectations are per profile",
                         hint=f"give models.{name} a `profile:` and add expectations.<profile> to the config")
    if expectation is None:
        raise UsageError(f"--check: no expectations for profile {profile!r} of '{name}'",
                         hint="add expectations.<profile> to the config")
    return expectation


def _render(out, result: BenchResult) -> None:
    from animllm_cli.output import table

    for level in result.levels:
        s = level.summary
        rows = [["completed / failed", f"{s.completed} / {s.failed}"], ["duration", f"{s.duration_s:.2f} s"],
                ["request throughput", f"{s.request_throughput:.2f} req/s"],
                ["output throughput", f"{s.output_throughput:.1f} tok/s"],
                ["total token throughput", f"{s.total_token_throughput:.1f} tok/s"]]
        for metric, d in (("TTFT", s.ttft_ms), ("TPOT", s.tpot_ms), ("ITL", s.itl_ms), ("E2EL", s.e2el_ms)):
            rows.append([f"{metric} ms mean / median / p90 / p99",
                         f"{d.mean:.2f} / {d.median:.2f} / {d.p90:.2f} / {d.p99:.2f}"])
        if level.vram_peak_bytes is not None:
            rows.append(["peak VRAM (all GPUs of this machine)", f"{level.vram_peak_bytes / 2**30:.2f} GiB"])
        if s.errors:
            rows.append(["errors", "; ".join(s.errors)])
        out.show(table(f"{result.model}: {level.label}, {result.input_len} in / {result.output_len} out tokens",
                       ["", ""], rows))
    if result.switch:
        spreads = [(name, getattr(result.switch.summary, name)) for name in result.switch.summary.names()]
        rows = [[name, "-" if v is None else f"{v.median:.2f} / {v.max:.2f}"] for name, v in spreads]
        kinds = f"{result.switch.wakes} woken from sleep, {result.switch.cold_loads} cold"
        out.show(table(f"Switches ({result.switch.count}: {kinds}): median / max seconds", ["", ""], rows))
    if result.check is not None:
        rows = [[r.metric, r.value, r.target, "ok" if r.ok else "MISSED"] for r in result.check]
        out.show(table("Expectations", ["metric", "value", "target", ""], rows))

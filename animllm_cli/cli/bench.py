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
                                                        help="Arrivals per second instead of fixed concurrency "
                                                             "(Poisson; see --burstiness); a list sweeps them, "
                                                             "e.g. 0.5,1,2.")] = None,
    burstiness: Annotated[float, typer.Option("--burstiness", min=0.0, help="Gamma shape of the gaps between "
                                              "arrivals, as vLLM's: 1 Poisson, below 1 burstier, above 1 steadier.")] = 1.0,
    ramp_up: Annotated[Optional[str], typer.Option("--ramp-up", metavar="linear|exponential:START:END",
                                                   show_default=False, help="One level whose rate climbs from START "
                                                   "to END req/s over the requests, e.g. linear:1:10.")] = None,
    requests: Annotated[Optional[int], typer.Option("--requests", "-n", min=1, show_default=False,
                                                    help="Requests per level (default 20; with --prompts: the "
                                                         "file's count).")] = None,
    input_len: Annotated[int, typer.Option("--input-len", min=1, help="Prompt length in the model's tokens "
                                           "(random prompts; words with --mix).")] = 128,
    output_len: Annotated[int, typer.Option("--output-len", min=1, help="Tokens generated per request; given, "
                                            "it beats the lengths in a --prompts file.")] = 64,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos/--no-ignore-eos",
                                             help="Generate every requested token (vLLM's ignore_eos).")] = True,
    prompts: Annotated[Optional[Path], typer.Option("--prompts", metavar="FILE", show_default=False,
                                                    help="Your own prompts: JSONL of {\"prompt\"} or {\"messages\"} "
                                                         "(with optional output_tokens), or ShareGPT JSON.")] = None,
    endpoint: Annotated[Optional[str], typer.Option("--endpoint", metavar="completions|chat", show_default=False,
                                                    help="Where requests go (default: chat for a file of chat "
                                                         "messages, else completions).")] = None,
    goodput: Annotated[Optional[list[str]], typer.Option("--goodput", metavar="ttft:MS tpot:MS e2el:MS",
                                                         show_default=False,
                                                         help="SLOs, as vLLM's: report the requests that met them "
                                                              "all (goodput).")] = None,
    mix: Annotated[Optional[str], typer.Option("--mix", metavar="MODEL:WEIGHT,…", show_default=False,
                                               help="Several models at once through the gateway, e.g. "
                                                    "coder:3,vision:1: per-model latency including switch waits, "
                                                    "and the switches.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of prompts, arrivals and --mix's choice of model.")] = 0,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Requests sent first and not counted (none with --mix).")] = 2,
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
    model, goodput_given = _goodput_pairs(ctx, model, goodput)
    loaded = common.load(ctx, config)
    resolve = common.model_resolver(loaded, url=url)
    workload, entries = _workload(prompts, endpoint, input_len, output_len, ignore_eos, ctx, mix is not None)
    count = requests or (len(entries) if entries else 20)
    arrivals = _arrivals(concurrency, request_rate, burstiness, ramp_up, ctx, mix is not None)
    api_key = os.environ.get(loaded.config.server.api_key_env)
    if mix is not None:
        _run_mix(ctx, out, loaded, resolve, model, workload, arrivals, count, goodput_given, api_key)
        return

    from animllm_cli.bench.runner import BenchPlan, run_bench

    name = resolve(model)[0]
    switch_models = [resolve(m.strip())[0] for m in switch.split(",")] if switch else []
    if switch and len(switch_models) < 2:
        from animllm_cli.errors import UsageError

        raise UsageError("--switch needs at least two models, e.g. --switch coder,vision")
    if not url:  # the gateway's models are the config's; another server's are not ours to judge
        _loaded_here(loaded, switch_models)
    expectation = _expectation(loaded, name) if check else None  # fail before the run, not after
    slo = _slo(goodput_given, expectation, loaded, name)
    levels, rates, ramp = arrivals
    plan = BenchPlan(url=url or common.gateway_url(loaded), model=name, levels=levels, request_rates=rates,
                     requests=count, workload=workload, warmup=warmup, switch_models=switch_models,
                     switch_rounds=switch_rounds, api_key=api_key, slo=slo, burstiness=burstiness, ramp_up=ramp,
                     prompts_label=str(prompts) if prompts else "random", seed=seed)
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


def _given(ctx: typer.Context, name: str) -> bool:
    # By the source's name: Typer may bring its own copy of click, with its own enum.
    return getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"


SLO_PAIR = r"^(?:[A-Za-z_]\w*:-?[\d.]+|ttft|tpot|e2el)$"  # NAME:MS, or a bare SLO name (parse_goodput judges)


def _goodput_pairs(ctx: typer.Context, model: str | None, goodput: list[str] | None):
    """`--goodput ttft:500 tpot:50` as vLLM spells it: the pairs after the first land
    among the arguments (even in MODEL's place), and are taken back from there."""
    import re

    from animllm_cli.bench.slo import parse_goodput
    from animllm_cli.errors import UsageError

    values, strays = list(goodput or []), list(ctx.args)
    if values and model is not None and re.match(SLO_PAIR, model):
        values.append(model)
        model = strays.pop(0) if strays and not re.match(SLO_PAIR, strays[0]) else None
    for stray in strays:
        if not (values and re.match(SLO_PAIR, stray)):
            raise UsageError(f"unexpected argument {stray!r}", hint="animllm bench --help lists the options")
        values.append(stray)
    return model, parse_goodput(values)


def _workload(prompts: Path | None, endpoint: str | None, input_len: int, output_len: int, ignore_eos: bool,
              ctx: typer.Context, mixing: bool):
    from animllm_cli.bench.loadgen import ENDPOINTS
    from animllm_cli.bench.workload import Workload
    from animllm_cli.errors import UsageError

    entries = None
    if prompts is not None:
        from animllm_cli.bench.prompts_file import has_messages, read_prompts

        entries = read_prompts(prompts)
    if endpoint is not None and endpoint not in ENDPOINTS:
        raise UsageError(f"--endpoint {endpoint!r}: expected one of {', '.join(ENDPOINTS)}")
    chat_file = bool(entries) and has_messages(entries)
    if endpoint == "completions" and chat_file:
        raise UsageError(f"--endpoint completions: {prompts} holds chat messages, which only the chat endpoint takes",
                         hint="leave out --endpoint (chat is chosen for such a file)")
    path = ENDPOINTS[endpoint or ("chat" if chat_file else "completions")]
    return Workload(endpoint=path, input_len=input_len, output_len=output_len, output_len_given=_given(ctx, "output_len"),
                    ignore_eos=ignore_eos, entries=entries, no_tokenizer=mixing), entries


def _arrivals(concurrency: str, request_rate: str | None, burstiness: float, ramp_up: str | None,
              ctx: typer.Context, mixing: bool):
    """(concurrency levels, request rates, ramp-up): one of the three describes the levels."""
    from animllm_cli.bench.arrivals import check_burstiness
    from animllm_cli.errors import UsageError

    check_burstiness(burstiness)
    if _given(ctx, "burstiness") and not (request_rate or ramp_up or mixing):
        raise UsageError("--burstiness shapes arrivals at a rate: give --request-rate, --ramp-up or --mix")
    if _given(ctx, "concurrency") and (request_rate or ramp_up or mixing):
        what = "--mix" if mixing else "--request-rate" if request_rate else "--ramp-up"
        raise UsageError(f"-c/--concurrency and {what} both say how requests arrive: give one")
    if ramp_up:
        from animllm_cli.bench.arrivals import parse_ramp_up

        if request_rate:
            raise UsageError("--ramp-up and --request-rate both set the rate: give one")
        if ctx.params.get("plot") is not None:
            raise UsageError("--plot draws levels against concurrency or rate; a ramp-up is one level of many "
                             "rates: drop --plot", hint="sweep rates instead: --request-rate 1,2,4,8 --plot FILE")
        return [], [], parse_ramp_up(ramp_up)
    rates = _rates(request_rate)
    if mixing and len(rates) > 1:
        raise UsageError(f"--mix takes one --request-rate, not a sweep ({request_rate})")
    if mixing:
        return [], rates or [1.0], None
    return ([] if rates else _levels(concurrency)), rates, None


def _slo(given, expectation, loaded, name: str):
    """--goodput, else the SLO of the model's profile; --check on a share needs one."""
    from animllm_cli.bench.slo import Slo
    from animllm_cli.errors import UsageError

    if not given:
        profile = _profile_expectation(loaded, name)
        if profile is not None and profile.slo is not None:
            given = Slo(**profile.slo.model_dump())
    if expectation is not None and expectation.good_share_min is not None and not given:
        raise UsageError(f"--check: expectations give good_share_min for '{name}' but no SLO says what is good",
                         hint="add --goodput ttft:MS tpot:MS, or expectations.<profile>.slo to the config")
    return given


def _run_mix(ctx: typer.Context, out, loaded, resolve, model: str | None, workload, arrivals, count: int, goodput,
             api_key: str | None) -> None:
    """`--mix`: the options not given here are read from ctx.params as the user gave them."""
    import asyncio

    from animllm_cli.bench.mix import MixPlan, parse_mix, run_mix
    from animllm_cli.errors import UsageError

    given = ctx.params
    url, check, plot = given["url"], given["check"], given["plot"]
    clashing = [f"--{name.replace('_', '-')}" for name in ("switch", "switch_rounds", "warmup") if _given(ctx, name)]
    if model is not None:
        clashing.insert(0, f"MODEL ({model})")
    if plot is not None:
        clashing.append("--plot")
    if clashing:
        raise UsageError(f"--mix names its models and measures from the state the gateway is in: drop "
                         f"{', '.join(clashing)}")
    shares = parse_mix(given["mix"], lambda name: resolve(name)[0])
    expectations = {name: _expectation(loaded, name) for name, _ in shares} if check else {}
    slos = {name: _slo(goodput, expectations.get(name), loaded, name) for name, _ in shares}
    _, rates, ramp = arrivals
    plan = MixPlan(url=url or common.gateway_url(loaded), shares=shares, requests=count, workload=workload,
                   request_rate=None if ramp else rates[0], burstiness=given["burstiness"], ramp_up=ramp,
                   slos={name: slo for name, slo in slos.items() if slo}, api_key=api_key, seed=given["seed"],
                   prompts_label=str(given["prompts"] or "random"))
    result = asyncio.run(run_mix(plan, out))
    if check:
        from animllm_cli.bench.expectations import check_mix

        result.check = check_mix(expectations, result.models, result.switch.switches if result.switch else [])
    report = result if given["samples"] else result.without_samples()
    _emit(out, report, _render_mix, given["json_path"], "results")
    if result.check is not None and not all(row.ok for row in result.check):
        raise typer.Exit(1)


def _render_mix(out, result) -> None:
    from animllm_cli.output import table

    def spread(d) -> str:
        return f"{d.median:.0f} / {d.p90:.0f} / {d.p99:.0f}"

    rows = []
    for m in result.models:
        s = m.summary
        good = "-" if s.good_requests is None else f"{s.good_requests}/{s.completed + s.failed}"
        rows.append([m.model, f"{m.weight:g}", f"{s.completed}/{s.failed}", spread(s.ttft_ms), spread(s.tpot_ms),
                     spread(s.e2el_ms), good, str(m.behind_switch), str(m.switches_in)])
    arrivals = f"ramp-up {result.ramp_up}" if result.ramp_up else f"{result.request_rate:g} req/s"
    out.show(table(f"Mix: {result.requests} requests at {arrivals}, {result.duration_s:.1f} s; ms median / p90 / p99",
                   ["model", "weight", "done/failed", "TTFT", "TPOT", "E2EL", "good", "behind switch", "switches"],
                   rows))
    switches = result.switch.switches if result.switch else []
    if switches:
        rows = [[s.get("from_model") or "-", s["to_model"], s.get("reason") or "-", s.get("load_kind") or "-",
                 _seconds(s.get("stop_s") if s.get("stop_s") is not None else s.get("sleep_s")),
                 _seconds(s.get("vram_release_s")), _seconds(s.get("load_s") if s.get("load_s") is not None
                                                             else s.get("wake_s")),
                 _seconds(s.get("total_s")), s.get("outcome", "")] for s in switches]
        out.show(table("Switches during the run, seconds", ["from", "to", "why", "kind", "stop/sleep", "VRAM release",
                                                            "load/wake", "total", "outcome"], rows))
    if result.switching_s is not None:
        out.info(f"switching: {result.switching_s:.1f} s of {result.duration_s:.1f} s wall "
                 f"({100 * result.switching_share:.0f} %), {len(switches)} switch(es)"
                 + (f"; {result.switches_lost} more fell out of the gateway's history" if result.switches_lost else ""))
    _render_check(out, result.check)


def _render_check(out, check) -> None:
    from animllm_cli.output import table

    if check is not None:
        rows = [[r.metric, r.value, r.target, "ok" if r.ok else "MISSED"] for r in check]
        out.show(table("Expectations", ["metric", "value", "target", ""], rows))


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.2f}"


# What runs a benchmark; none of it applies to --compare, which reads two saved runs.
RUN_OPTIONS = ("model", "concurrency", "request_rate", "burstiness", "ramp_up", "requests", "input_len", "output_len",
               "ignore_eos", "prompts", "endpoint", "goodput", "mix", "seed", "warmup", "switch", "switch_rounds",
               "samples", "check", "url")


def _compare(ctx: typer.Context, out, files: tuple[Path, Path], plot: Path | None, json_path: Path | None) -> None:
    from animllm_cli.bench.compare import compare, read_saved
    from animllm_cli.errors import UsageError

    given = [name for name in RUN_OPTIONS if _given(ctx, name)]
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


def _profile_expectation(loaded, name: str):
    spec = loaded.config.models.get(name)
    profile = spec.profile if spec else None
    return loaded.config.expectations.get(profile) if profile else None


def _expectation(loaded, name: str):
    from animllm_cli.errors import UsageError

    spec = loaded.config.models.get(name)
    profile = spec.profile if spec else None
    expectation = _profile_expectation(loaded, name)
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
        if s.good_requests is not None:
            from animllm_cli.bench.slo import Slo

            rows.append([f"within SLO ({Slo(**result.goodput_slo).describe()})",
                         f"{s.good_requests} of {s.completed + s.failed}, goodput {s.request_goodput:.2f} req/s"])
        if level.vram_peak_bytes is not None:
            rows.append(["peak VRAM (all GPUs of this machine)", f"{level.vram_peak_bytes / 2**30:.2f} GiB"])
        if s.errors:
            rows.append(["errors", "; ".join(s.errors)])
        workload = f"{result.input_len} in / {result.output_len} out tokens" if result.prompts == "random" else \
            f"prompts from {result.prompts}"
        out.show(table(f"{result.model}: {level.label}, {workload}", ["", ""], rows))
    if result.switch:
        spreads = [(name, getattr(result.switch.summary, name)) for name in result.switch.summary.names()]
        rows = [[name, "-" if v is None else f"{v.median:.2f} / {v.max:.2f}"] for name, v in spreads]
        kinds = f"{result.switch.wakes} woken from sleep, {result.switch.cold_loads} cold"
        out.show(table(f"Switches ({result.switch.count}: {kinds}): median / max seconds", ["", ""], rows))
    _render_check(out, result.check)

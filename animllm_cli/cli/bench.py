"""`animllm bench`, `bench-mix` and `bench-compare`: one model measured the way vLLM's serving
benchmark measures it (TTFT, TPOT, ITL, E2EL, throughput, switch times), several models at
once through the gateway, and two saved runs side by side; `--check` gates on the config's
expectations. Parsing and printing only: the runs, the checks and the tables are bench/'s."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from animllm_cli.cli import common


def bench(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Argument(metavar="MODEL", help="Model to measure (default: default_model).",
                                                   show_default=False, autocompletion=common.complete_models)] = None,
    concurrency: Annotated[str, typer.Option("--concurrency", metavar="N[,N…]", help="Levels to sweep, e.g. 1,4,10,32.")] = "1",
    request_rate: Annotated[Optional[str], typer.Option("--request-rate", metavar="R[,R…]", show_default=False,
                                                        help="Arrivals per second instead of fixed concurrency "
                                                             "(Poisson; see --burstiness); a list sweeps them, "
                                                             "e.g. 0.5,1,2.")] = None,
    burstiness: common.BurstinessOption = 1.0,
    ramp_up: common.RampUpOption = None,
    requests: common.RequestsOption = None,
    input_len: common.InputLenOption = 128,
    output_len: common.OutputLenOption = 64,
    ignore_eos: common.IgnoreEosOption = True,
    prompts: common.PromptsOption = None,
    endpoint: common.EndpointOption = None,
    goodput: common.GoodputOption = None,
    seed: common.SeedOption = 0,
    warmup: Annotated[int, typer.Option("--warmup", metavar="N", min=0, help="Requests sent first and not counted.")] = 2,
    switch: Annotated[Optional[str], typer.Option("--switch", metavar="A,B[,C]",
                                                  help="Also time switches between these models.")] = None,
    switch_rounds: Annotated[int, typer.Option("--switch-rounds", metavar="N", min=1,
                                               help="Times to go round the --switch models.")] = 2,
    json_output: common.JsonOption = False,
    save: common.SaveOption = None,
    samples: common.SamplesOption = False,
    check: common.CheckOption = False,
    url: common.UrlOption = None,
    plot: common.PlotOption = None,
    startup: Annotated[bool, typer.Option("--startup", help="Measure cold starts of MODEL's engine instead, phase by "
                                                           "phase (starts engines of its own: no gateway).")] = False,
    runs: Annotated[int, typer.Option("--runs", metavar="N", min=1, help="With --startup: starts of each kind.")] = 3,
    cache: Annotated[Optional[str], typer.Option("--cache", metavar="warm|cold|both", show_default=False,
                                                 help="With --startup: the configured vLLM cache, a fresh one, or "
                                                      "both (default: both where the model compiles, else warm).")] = None,
    launch: Annotated[Optional[str], typer.Option("--launch", metavar="fresh|standby|both", show_default=False,
                                                  help="With --startup: a new interpreter, one pre-started with its "
                                                       "imports done, or both (default: as the gateway does).")] = None,
    config: common.ConfigOption = None,
) -> None:
    """Measure one model as vLLM's serving benchmark does.

    For several models at once see bench-mix; for two saved runs, bench-compare; for
    cold starts phase by phase, --startup.
    """
    import asyncio

    from animllm_cli.bench import arrivals, expectations
    from animllm_cli.bench.runner import BenchPlan, run_bench
    from animllm_cli.bench.switching import switch_models

    out = common.output(ctx)
    _check_plot(plot)
    if not startup and any(_given(ctx, name) for name in STARTUP_ONLY):
        from animllm_cli.errors import UsageError

        raise UsageError("--runs, --cache and --launch measure engine starts: add --startup")
    if startup:
        _refuse_with_startup(ctx, url, check, switch)
        _bench_startup(ctx, out, common.load(ctx, config), model, runs, cache, launch, json_output, save, plot)
        return
    model, slo = _goodput_pairs(ctx, model, goodput)
    loaded = common.load(ctx, config)
    resolve = _model_names(loaded, url)
    workload = _workload(ctx, prompts, endpoint, input_len, output_len, ignore_eos, no_tokenizer=False)
    levels, rates, ramp = arrivals.sweep(concurrency, request_rate, burstiness, ramp_up, plotting=plot is not None,
                                         concurrency_given=_given(ctx, "concurrency"),
                                         burstiness_given=_given(ctx, "burstiness"))
    name = resolve(model)
    switching = switch_models(switch, resolve, loaded.config, our_gateway=not url)
    expectation = expectations.required_expectation(loaded.config, name) if check else None
    plan = BenchPlan(url=url or common.gateway_url(loaded), model=name, levels=levels, request_rates=rates,
                     requests=_count(requests, workload), workload=workload, warmup=warmup, switch_models=switching,
                     switch_rounds=switch_rounds, api_key=_api_key(loaded), burstiness=burstiness, ramp_up=ramp,
                     slo=expectations.slo_for(slo, expectation, loaded.config, name), prompts_label=_label(prompts),
                     seed=seed)
    result = asyncio.run(run_bench(plan, out))
    if check:
        result.check = expectations.check(expectation, result.levels, result.switch)
    report = result if samples else result.without_samples()
    _emit(out, report, _show_run, json_output, save)
    if plot is not None:
        _plot(out, plot, [(result.model, report.to_json())])
    _exit_if_missed(result.check)


def bench_mix(
    ctx: typer.Context,
    mix: Annotated[str, typer.Argument(metavar="MODELS", show_default=False,
                                       help="The models and their shares of the requests, e.g. coder:3,vision:1 "
                                            "(a model without a weight weighs 1).")],
    request_rate: Annotated[float, typer.Option("--request-rate", metavar="R", min=0.01,
                                                help="Arrivals per second (Poisson; see --burstiness).")] = 1.0,
    burstiness: common.BurstinessOption = 1.0,
    ramp_up: common.RampUpOption = None,
    requests: common.RequestsOption = None,
    input_len: common.InputLenOption = 128,
    output_len: common.OutputLenOption = 64,
    ignore_eos: common.IgnoreEosOption = True,
    prompts: common.PromptsOption = None,
    endpoint: common.EndpointOption = None,
    goodput: common.GoodputOption = None,
    seed: common.SeedOption = 0,
    json_output: common.JsonOption = False,
    save: common.SaveOption = None,
    samples: common.SamplesOption = False,
    check: common.CheckOption = False,
    url: common.UrlOption = None,
    config: common.ConfigOption = None,
) -> None:
    """Measure several models at once through the gateway.

    Per-model latency with the switch waits, and the switches the gateway made meanwhile. No warm-up: it measures from the state the gateway is in.
    """
    import asyncio

    from animllm_cli.bench import arrivals, expectations
    from animllm_cli.bench.mix import MixPlan, parse_mix, run_mix

    out = common.output(ctx)
    mix, slo = _goodput_pairs(ctx, mix, goodput)
    if mix is None:
        from animllm_cli.errors import UsageError

        raise UsageError("bench-mix: name the models, e.g. animllm bench-mix coder:3,vision:1")
    loaded = common.load(ctx, config)
    resolve = _model_names(loaded, url)
    workload = _workload(ctx, prompts, endpoint, input_len, output_len, ignore_eos, no_tokenizer=True)
    rate, ramp = arrivals.one_rate(request_rate, burstiness, ramp_up, rate_given=_given(ctx, "request_rate"))
    shares = parse_mix(mix, resolve)
    wanted = {name: expectations.required_expectation(loaded.config, name) for name, _ in shares} if check else {}
    slos = {name: expectations.slo_for(slo, wanted.get(name), loaded.config, name) for name, _ in shares}
    plan = MixPlan(url=url or common.gateway_url(loaded), shares=shares, requests=_count(requests, workload),
                   workload=workload, request_rate=rate, burstiness=burstiness, ramp_up=ramp,
                   slos={name: slo for name, slo in slos.items() if slo}, api_key=_api_key(loaded), seed=seed,
                   prompts_label=_label(prompts))
    result = asyncio.run(run_mix(plan, out))
    if check:
        result.check = expectations.check_mix(wanted, result.models, result.switch.switches if result.switch else [])
    report = result if samples else result.without_samples()
    _emit(out, report, _show_mix, json_output, save)
    _exit_if_missed(result.check)


def bench_compare(
    ctx: typer.Context,
    a: Annotated[Path, typer.Argument(metavar="A.json", help="A run saved with bench --save.")],
    b: Annotated[Path, typer.Argument(metavar="B.json", help="Another, shown against A as B/A.")],
    json_output: common.JsonOption = False,
    save: common.SaveOption = None,
    plot: common.PlotOption = None,
    config: common.ConfigOption = None,  # accepted after the command as everywhere; two files need no config
) -> None:
    """Compare two saved bench runs side by side (runs nothing).

    Level by level, with B/A."""
    from animllm_cli.bench.compare import compare, kind, read_saved

    out = common.output(ctx)
    _check_plot(plot)
    a_run, b_run = read_saved(a), read_saved(b)
    comparison = compare(a, a_run, b, b_run)  # two bench runs, or two bench-mix results (model by model)
    if plot is not None and kind(a_run) == "mix":
        from animllm_cli.errors import UsageError

        raise UsageError("--plot draws a sweep's levels; a bench-mix result has none: drop --plot")
    _emit(out, comparison, _show_comparison, json_output, save, "comparison")
    if plot is not None:
        _plot(out, plot, [(a.stem, a_run), (b.stem if b.stem != a.stem else str(b), b_run)])


STARTUP_IGNORES = ("concurrency", "request_rate", "burstiness", "ramp_up", "requests", "input_len", "output_len",
                   "ignore_eos", "prompts", "endpoint", "goodput", "seed", "warmup", "switch_rounds", "samples")
STARTUP_ONLY = ("runs", "cache", "launch")


def _refuse_with_startup(ctx: typer.Context, url: str | None, check: bool, switch: str | None) -> None:
    """--startup starts engines here and sends one request to each: the sweep's options
    mean nothing to it, and silently ignoring one would measure something else."""
    from animllm_cli.errors import UsageError

    given = [name for name in STARTUP_IGNORES if _given(ctx, name)]
    given += [name for name, value in (("url", url), ("check", check), ("switch", switch)) if value]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"--startup measures engine starts; {flags} belong to the request benchmark",
                         hint="drop them, or run the two measurements apart")


def _bench_startup(ctx, out, loaded, model: str | None, runs: int, cache: str | None, launch: str | None,
                   json_output: bool, save: Path | None, plot: Path | None) -> None:
    from animllm_cli.bench import startup as measured
    from animllm_cli.errors import AnimllmError, UsageError
    from animllm_cli import runfile

    name = loaded.catalogue.resolve(model)
    if loaded.config.models[name].remote:
        raise UsageError(f"bench --startup starts engines; '{name}' is served elsewhere (upstream)",
                         hint="measure a local model")
    try:
        runfile.ensure_not_running()
    except AnimllmError as running:
        raise AnimllmError(f"bench --startup starts engines of its own, beside the running gateway's: {running}",
                           hint="`animllm stop` first: the measured starts need what its engines hold") from None
    view = loaded.model(name)
    caches = _choice("--cache", cache, measured.CACHES,
                     list(measured.CACHES) if not view.settings.get("enforce_eager") else ["warm"])
    launches = _choice("--launch", launch, measured.LAUNCHES,
                       ["standby" if loaded.config.engine.standby else "fresh"])

    def on_run(index: int, kind: str, how: str) -> None:
        out.info(f"start {index + 1} of {runs}: {kind} cache, {how} interpreter")

    def on_progress(p) -> None:
        out.debug(f"  {p.model}: {p.phase} ({p.elapsed_s:.1f}s)")

    result = measured.measure(loaded, name, runs=runs, caches=caches, launches=launches, on_run=on_run,
                              on_progress=on_progress)
    _emit(out, result, _show_startup, json_output, save)
    estimate = measured.save_estimate(result, _configured_command(loaded, name))
    out.info(f"kept for `animllm plan`: {estimate.total_s:g} s to the first answer ({estimate.cache} cache, "
             f"{estimate.launched_by} interpreter)")
    if plot is not None:
        from animllm_cli.bench.plot import write_startup_plot

        write_startup_plot(plot, result.to_json())
        out.info(f"plot written to {plot}")


def _choice(flag: str, value: str | None, allowed: tuple[str, ...], default: list[str]) -> list[str]:
    from animllm_cli.errors import UsageError

    if value is None:
        return default
    if value == "both":
        return list(allowed)
    if value not in allowed:
        raise UsageError(f"{flag} {value!r}: choose {', '.join(allowed)} or both")
    return [value]


def _configured_command(loaded, name: str):
    """The model's command as `plan` builds it, to tell later whether the estimate still applies."""
    from animllm_cli.engine.command import build_engine_command

    return build_engine_command(loaded, loaded.model(name))


def _show_startup(out, result) -> None:
    from animllm_cli.bench import tables

    out.show(tables.startup_table(result))
    if result.answers_identical is not None:
        out.info("first answers (greedy, seeded): " + ("identical in every run" if result.answers_identical else
                                                      "DIFFERENT between runs: a start changed what the model says"))


def _model_names(loaded, url: str | None):
    """The gateway's name for a word (a task word picks a loaded model first). A word the
    config does not know is refused before any request, naming the models it knows; with
    --url the server is another's, whose names are its own: passed as typed."""
    resolve = common.model_resolver(loaded, url=url)

    def name(word: str | None) -> str:
        if url is None:
            loaded.catalogue.resolve(word)  # raises for an unknown word, with the configured models
        return resolve(word)[0]

    return name


def _given(ctx: typer.Context, name: str) -> bool:
    # By the source's name: Typer may bring its own copy of click, with its own enum.
    return getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"


SLO_PAIR = r"^(?:[A-Za-z_]\w*:-?[\d.]+|ttft|tpot|e2el)$"  # NAME:MS, or a bare SLO name (parse_goodput judges)


def _goodput_pairs(ctx: typer.Context, positional: str | None, goodput: list[str] | None):
    """`--goodput ttft:500 tpot:50` as vLLM spells it: the pairs after the first land
    among the arguments (even in the positional's place: MODEL, the mix), and are taken
    back from there."""
    from animllm_cli.bench.slo import parse_goodput
    from animllm_cli.errors import UsageError

    values, strays = list(goodput or []), list(ctx.args)
    if values and positional is not None and re.match(SLO_PAIR, positional):
        values.append(positional)
        positional = strays.pop(0) if strays and not re.match(SLO_PAIR, strays[0]) else None
    for stray in strays:
        if not (values and re.match(SLO_PAIR, stray)):
            raise UsageError(f"unexpected argument {stray!r}", hint=f"animllm {ctx.info_name} --help lists the options")
        values.append(stray)
    return positional, parse_goodput(values)


def _workload(ctx: typer.Context, prompts: Path | None, endpoint: str | None, input_len: int, output_len: int,
              ignore_eos: bool, *, no_tokenizer: bool):
    from animllm_cli.bench.workload import workload_for

    return workload_for(prompts, endpoint, input_len=input_len, output_len=output_len, ignore_eos=ignore_eos,
                        output_len_given=_given(ctx, "output_len"), no_tokenizer=no_tokenizer)


def _count(requests: int | None, workload) -> int:
    return requests or (len(workload.entries) if workload.entries else 20)


def _label(prompts: Path | None) -> str:
    return str(prompts) if prompts else "random"


def _api_key(loaded) -> str | None:
    from animllm_cli.bind import api_key

    return api_key(loaded)


def _check_plot(plot: Path | None) -> None:
    """Before anything runs: a sweep can take minutes, and its plot must not fail after it."""
    if plot is not None:
        from animllm_cli.bench.plot import check_plot_path

        check_plot_path(plot)


def _emit(out, data, show, json_output: bool, save: Path | None, what: str = "results") -> None:
    """`--json`: stdout carries the JSON alone; otherwise the tables. `--save`: the file too."""
    out.result(data, lambda d: show(out, d), json=json_output)
    if save is not None:
        from animllm_cli.output import json_text

        save.write_text(json_text(data) + "\n")
        out.info(f"{what} written to {save}")


def _plot(out, path: Path, runs) -> None:
    from animllm_cli.bench.plot import write_plot

    write_plot(path, runs)
    out.info(f"plot written to {path}")


def _exit_if_missed(check) -> None:
    if check is not None and not all(row.ok for row in check):
        raise typer.Exit(1)


def _show_run(out, result) -> None:
    from animllm_cli.bench import tables

    for table in tables.run_tables(result):
        out.show(table)
    _show_check(out, result.check)


def _show_mix(out, result) -> None:
    from animllm_cli.bench import tables

    for table in tables.mix_tables(result):
        out.show(table)
    line = tables.switching_line(result)
    if line is not None:
        out.info(line)
    _show_check(out, result.check)


def _show_comparison(out, comparison) -> None:
    from animllm_cli.bench import tables

    for table in tables.comparison_tables(comparison):
        out.show(table)
    for note in comparison.notes:
        out.info(f"note: {note}")


def _show_check(out, check) -> None:
    if check is not None:
        from animllm_cli.bench.tables import check_table

        out.show(check_table(check))

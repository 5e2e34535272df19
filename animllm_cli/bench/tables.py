"""What bench's results look like in a terminal: the tables of `bench`, `bench-mix` and
`bench-compare`, built from their typed results; `cli/bench.py` prints them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from animllm_cli.bench.compare import cell
from animllm_cli.bench.slo import Slo
from animllm_cli.output import table
from animllm_cli.units import gib

if TYPE_CHECKING:  # the mix's module brings aiohttp: bench-compare prints without it
    from animllm_cli.bench.compare import Comparison
    from animllm_cli.bench.mix import MixResult
    from animllm_cli.bench.results import BenchResult, CheckRow
    from animllm_cli.bench.startup import StartupResult

NONE_COMPLETED = "- (no request completed)"  # a level's latencies when none completed: no 0 as if measured


def run_tables(result: BenchResult) -> list[Any]:
    """One table per level, then the switches' if any were timed."""
    tables = []
    for level in result.levels:
        s = level.summary
        rows = [["completed / failed", f"{s.completed} / {s.failed}"], ["duration", f"{s.duration_s:.2f} s"],
                ["request throughput", f"{s.request_throughput:.2f} req/s"],
                ["output throughput", f"{s.output_throughput:.1f} tok/s"],
                ["total token throughput", f"{s.total_token_throughput:.1f} tok/s"]]
        for metric, d in (("TTFT", s.ttft_ms), ("TPOT", s.tpot_ms), ("ITL", s.itl_ms), ("E2EL", s.e2el_ms)):
            rows.append([f"{metric} ms mean / median / p90 / p99",
                         f"{d.mean:.2f} / {d.median:.2f} / {d.p90:.2f} / {d.p99:.2f}" if s.completed else NONE_COMPLETED])
        if s.good_requests is not None:
            rows.append(["within SLO", f"{s.good_requests} of {s.completed + s.failed} "
                                       f"({Slo(**result.goodput_slo).describe()}), goodput {s.request_goodput:.2f} req/s"])
        if level.vram_peak_bytes is not None:  # short keys: the values get the width
            rows.append(["peak VRAM", f"{gib(level.vram_peak_bytes, 2)} (all GPUs of this machine)"])
        if s.errors:
            rows.append(["errors", "; ".join(s.errors)])
        workload = f"{result.input_len} in / {result.output_len} out tokens" if result.prompts == "random" else \
            f"prompts from {result.prompts}"
        tables.append(table(f"{result.model}: {level.label}, {workload}", ["", ""], rows))
    if result.switch:
        spreads = [(name, getattr(result.switch.summary, name)) for name in result.switch.summary.names()]
        rows = [[name, "-" if v is None else f"{v.median:.2f} / {v.max:.2f}"] for name, v in spreads]
        kinds = f"{result.switch.wakes} woken from sleep, {result.switch.cold_loads} cold"
        tables.append(table(f"Switches ({result.switch.count}: {kinds}): median / max seconds", ["", ""], rows))
    return tables


def mix_tables(result: MixResult) -> list[Any]:
    """One row per model, then its latencies, a row per metric (narrow enough for 60
    columns), then the switches the gateway made during the run."""
    rows, latencies = [], []
    for m in result.models:
        s = m.summary
        good = "-" if s.good_requests is None else f"{s.good_requests}/{s.completed + s.failed}"
        switches_in = f"{m.switches_in}" + (f", {m.switches_failed} failed" if m.switches_failed else "")
        rows.append([m.model, f"{m.weight:g}", f"{s.completed}/{s.failed}", good, str(m.behind_switch), switches_in])
        for metric, d in (("TTFT", s.ttft_ms), ("TPOT", s.tpot_ms), ("E2EL", s.e2el_ms)):
            # a model with no completed request has no latency to show, not a 0
            figures = [f"{v:.0f}" for v in (d.median, d.p90, d.p99)] if s.completed else ["-"] * 3
            latencies.append([m.model if metric == "TTFT" else "", metric, *figures])
    arrivals = f"ramp-up {result.ramp_up}" if result.ramp_up else f"{result.request_rate:g} req/s"
    tables = [table(f"Mix: {result.requests} requests at {arrivals}, {result.duration_s:.1f} s",
                    ["model", "weight", "done/failed", "good", "behind switch", "switches"], rows,
                    no_wrap=("model",), below=("behind switch", "weight")),
              table("Latency, ms", ["model", "metric", "median", "p90", "p99"], latencies, no_wrap=("model",))]
    switches = result.switch.switches if result.switch else []
    if switches:
        rows = [[f"{s.get('from_model') or '-'} -> {s['to_model']}", s.get("reason") or "-", s.get("load_kind") or "-",
                 _seconds(s.get("stop_s") if s.get("stop_s") is not None else s.get("sleep_s")),
                 _seconds(s.get("vram_release_s")), _seconds(s.get("load_s") if s.get("load_s") is not None
                                                             else s.get("wake_s")),
                 _seconds(s.get("total_s")), s.get("outcome", "")] for s in switches]
        columns = ["switch", "why", "kind", "evict", "VRAM release", "load", "total", "outcome"]
        tables.append(table("Switches during the run, seconds (evict: stop or sleep; load: cold or wake)", columns,
                            rows, no_wrap=("switch",),
                            below=("kind", "why", "VRAM release")))
    return tables


def switching_line(result: MixResult) -> str | None:
    """How much of the mix's wall time had a switch under way; None when the server keeps no
    history or it could not be read (said apart, when it happens)."""
    if result.switching_s is None:
        return None
    switches = result.switch.switches if result.switch else []
    failed = sum(s.get("outcome") == "failed" for s in switches)
    return (f"switching: {result.switching_s:.1f} s of {result.duration_s:.1f} s wall "
            f"({100 * result.switching_share:.0f} %), {len(switches)} switch(es)"
            + (f", {failed} failed" if failed else "")
            + (f"; {result.switches_lost} more fell out of the gateway's history" if result.switches_lost else ""))


def comparison_tables(comparison: Comparison) -> list[Any]:
    """Which file is A and which B, then the levels side by side (the files, which can be
    long paths, are no column headers: the figures keep the width)."""
    columns = ["metric", "A", "B", "B/A"]
    tables = [table(None, ["", ""], [["A", comparison.a], ["B", comparison.b]])]
    for level in comparison.levels:
        rows = [[row.metric, cell(row.a, row.format), cell(row.b, row.format), cell(row.ratio, "{:.3f}")]
                for row in level.rows]
        tables.append(table(f"{level.level}", columns, rows, no_wrap=("metric",)))
    if comparison.switch:
        rows = [[row.metric, cell(row.a, "{:.2f}"), cell(row.b, "{:.2f}"), cell(row.ratio, "{:.3f}")]
                for row in comparison.switch]
        tables.append(table("Switches, seconds", columns, rows, no_wrap=("metric",)))
    return tables


def check_table(check: list[CheckRow]) -> Any:
    rows = [[r.metric, r.value, r.target, "ok" if r.ok else "MISSED"] for r in check]
    return table("Expectations", ["metric", "value", "target", ""], rows)


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def startup_table(result: "StartupResult") -> Any:
    """One row per phase, in the order they came; per kind of start (cache, interpreter),
    the median seconds and the range over the runs."""
    groups = result.groups()
    spreads = {group: {s.phase: s for s in result.spreads(*group)} for group in groups}
    phases = list(dict.fromkeys(name for group in groups for name in spreads[group]))
    rows = [[name, *(_spread_cell(spreads[group].get(name)) for group in groups)] for name in phases]
    columns = ["phase", *(f"{cache} cache, {how}" for cache, how in groups)]
    runs = max((s.runs for by_phase in spreads.values() for s in by_phase.values()), default=0)
    title = f"Start-up of {result.model}: median s (min-max) over {runs} runs each, vLLM {result.vllm or '?'}"
    return table(title, columns, rows, no_wrap=("phase",))


def _spread_cell(spread) -> str:
    if spread is None:
        return "-"
    return f"{spread.median_s:.2f} ({spread.min_s:.2f}-{spread.max_s:.2f})"

"""`bench --plot FILE`: what a sweep measured, drawn with matplotlib (the optional extra
`animllm-cli[plot]`), from bench's JSON form, so a saved run and a fresh one draw alike and
`bench-compare` draws two runs on the same axes.

Panels: TTFT and TPOT (median, p90, p99) and output tokens/s against concurrency or
request rate, ticked at the levels measured (on a log scale when each level at least
doubles the one before); with --switch, one bar per switch, its phases laid end to end.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from animllm_cli.errors import AnimllmError, UsageError

FORMATS = (".png", ".svg")
EXTRA_HINT = "pip install 'animllm-cli[plot]' (matplotlib), into the environment animllm runs from"
# The phases of a switch in the order they happen, each with its own colour (never a run's:
# in bench-compare, colours tell the runs apart). Each of the first and third is one of a
# pair: the evicted model sent to sleep or stopped; the model woken or started cold.
PHASES = (("stop or sleep", ("sleep_s", "stop_s"), "tab:gray"), ("VRAM release", ("vram_release_s",), "tab:olive"),
          ("load or wake", ("wake_s", "load_s"), "tab:purple"), ("first token", ("first_token_s",), "tab:red"))
PERCENTILES = (("median", "-"), ("p90", "--"), ("p99", ":"))


def check_plot_path(path: Path) -> None:
    """Before anything runs: a format we can write, a folder that exists, matplotlib there.
    A sweep can take minutes; its plot must not fail after it."""
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"--plot {path}: the format comes from the extension: .png or .svg")
    if not path.parent.is_dir():
        raise UsageError(f"--plot {path}: the folder {path.parent} does not exist")
    _pyplot()


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise AnimllmError("--plot needs matplotlib, which is not installed", hint=EXTRA_HINT) from None
    matplotlib.use("Agg")  # files only: no display is needed (over SSH, in CI)
    import matplotlib.pyplot as plt

    return plt


def write_plot(path: Path, runs: list[tuple[str, dict[str, Any]]]) -> None:
    """Draw `runs` (a label and bench's JSON for each) into `path`; PNG or SVG by extension."""
    figure = draw(runs)
    figure.savefig(path, format=path.suffix.lower().lstrip("."), dpi=100)
    _pyplot().close(figure)


def draw(runs: list[tuple[str, dict[str, Any]]]) -> Any:
    """The figure of `runs` (a label and bench's JSON for each)."""
    plt = _pyplot()
    with_switches = [(label, run) for label, run in runs if (run.get("switch") or {}).get("switches")]
    rows = 2 + bool(with_switches)
    figure = plt.figure(figsize=(11, 4 * rows), layout="constrained")
    grid = figure.add_gridspec(rows, 2)
    ttft, tpot = figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[0, 1])
    throughput = figure.add_subplot(grid[1, :])
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, run) in enumerate(runs):
        colour = colours[index % len(colours)]
        _percentiles(ttft, run, "ttft_ms", label, colour)
        _percentiles(tpot, run, "tpot_ms", label, colour)
        _throughput(throughput, run, label, colour)
    ttft.set(title="Time to first token", ylabel="ms")
    tpot.set(title="Time per output token", ylabel="ms")
    throughput.set(title="Output throughput", ylabel="tokens/s")
    for axes in (ttft, tpot, throughput):
        _level_ticks(axes, runs)
        axes.set_xlabel(_x_label(runs))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        axes.set_ylim(bottom=0)
    if with_switches:
        _switch_timeline(figure.add_subplot(grid[2, :]), with_switches)
    figure.suptitle(_title(runs))
    return figure


def _points(run: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    """(concurrency or request rate, summary) per level, in order along the x axis."""
    levels = [(level["concurrency"] or level["request_rate"], level["summary"]) for level in run.get("levels", [])]
    return sorted(levels, key=lambda point: point[0])


def _percentiles(axes: Any, run: dict[str, Any], metric: str, label: str, colour: str) -> None:
    points = _points(run)
    for name, style in PERCENTILES:
        axes.plot([x for x, _ in points], [s[metric][name] for _, s in points], style, marker="o", color=colour,
                  label=f"{label} {name}")


def _throughput(axes: Any, run: dict[str, Any], label: str, colour: str) -> None:
    points = _points(run)
    axes.plot([x for x, _ in points], [s["output_throughput"] for _, s in points], "-", marker="o", color=colour,
              label=label)


def _level_ticks(axes: Any, runs: list[tuple[str, dict[str, Any]]]) -> None:
    """A tick at each level measured and none between (a sweep of 1 and 4 has no level 2.5);
    a log scale when each level at least doubles the one before, as in 1, 2, 4, 8."""
    levels = sorted({x for _, run in runs for x, _ in _points(run) if math.isfinite(x)})
    if len(levels) > 1 and all(high >= 2 * low for low, high in zip(levels, levels[1:])):
        axes.set_xscale("log", base=2)
    axes.set_xticks(levels, [f"{level:g}" for level in levels])
    axes.set_xticks([], minor=True)


def _switch_timeline(axes: Any, runs: list[tuple[str, dict[str, Any]]]) -> None:
    """One horizontal bar per switch, its phases end to end from its own start; the same
    colour for a phase in every bar."""
    names: list[str] = []
    for label, run in runs:
        for switch in run["switch"]["switches"]:
            start = 0.0
            for phase, keys, colour in PHASES:
                seconds = next((switch[k] for k in keys if switch.get(k) is not None), None)
                if seconds:
                    axes.barh(len(names), seconds, left=start, color=colour, label=phase)
                    start += seconds
            name = f"{switch.get('from_model') or '-'} → {switch['to_model']} ({switch.get('load_kind') or 'load'})"
            names.append(f"{label}: {name}" if len(runs) > 1 else name)
    axes.set_yticks(range(len(names)), names, fontsize="small")
    axes.invert_yaxis()  # the first switch on top, as they happened
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one legend entry per phase, not per bar
    axes.legend(unique.values(), unique.keys(), fontsize="small", loc="lower right")
    axes.set(title="Switches, phase by phase", xlabel="seconds from the switch's start")
    axes.grid(axis="x", alpha=0.3)


def _x_label(runs: list[tuple[str, dict[str, Any]]]) -> str:
    by_rate = any(level["request_rate"] and not level["concurrency"] for _, run in runs for level in run.get("levels", []))
    by_concurrency = any(level["concurrency"] for _, run in runs for level in run.get("levels", []))
    if by_rate and by_concurrency:
        return "concurrency, or request rate (req/s)"
    return "request rate (req/s)" if by_rate else "concurrency"


def _title(runs: list[tuple[str, dict[str, Any]]]) -> str:
    shapes = {(run.get("model"), run.get("input_len"), run.get("output_len")) for _, run in runs}
    if len(shapes) == 1:
        model, input_len, output_len = shapes.pop()
        return f"{model}: {input_len} tokens in, {output_len} out"
    return " vs ".join(f"{label} ({run.get('model')}: {run.get('input_len')} in, {run.get('output_len')} out)"
                       for label, run in runs)


def write_startup_plot(path: Path, startup: dict[str, Any]) -> None:
    """`bench --startup --plot`: one bar per kind of start (cache, interpreter), its
    phases' medians laid end to end in the order they came, each phase its own colour."""
    plt = _pyplot()
    groups = startup["summary"]
    names = list(dict.fromkeys(p["phase"] for g in groups for p in g["phases"] if p["phase"] not in ("ready", "total")))
    colours = plt.get_cmap("tab20")
    figure, axes = plt.subplots(figsize=(12, max(3.0, 1.2 + 0.6 * len(groups))))
    for row, group in enumerate(groups):
        left = 0.0
        for phase in group["phases"]:
            if phase["phase"] in ("ready", "total"):
                continue
            index = names.index(phase["phase"])
            axes.barh(row, phase["median_s"], left=left, color=colours(index % 20),
                      label=phase["phase"] if row == 0 or phase["phase"] not in _labels(axes) else None)
            left += phase["median_s"]
    axes.set_yticks(range(len(groups)), [f"{g['cache']} cache, {g['launched_by']}" for g in groups])
    axes.set_xlabel("seconds from launch (medians)")
    axes.set_title(f"Start-up of {startup['model']} (vLLM {startup.get('vllm') or '?'})")
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
    figure.tight_layout()
    figure.savefig(path, format=path.suffix.lower().lstrip("."), dpi=100)
    plt.close(figure)


def _labels(axes: Any) -> set[str]:
    return set(axes.get_legend_handles_labels()[1])

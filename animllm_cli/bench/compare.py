"""`bench-compare A.json B.json`: two saved runs side by side, level by level, with B/A;
or two saved bench-mix runs, model by model and all models together.

Levels are matched by what they held fixed (concurrency 4, or 2 req/s); a level only one
run has is shown with a dash on the other side rather than dropped. Whatever else differs
in how the runs were made (the endpoint, the prompts, the SLOs, the burstiness, the number
of requests, ...) is said in a note: a ratio alone would hide it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animllm_cli.bench.results import SCHEMA_VERSION, level_label, read_infinities
from animllm_cli.bench.slo import Slo
from animllm_cli.errors import UsageError

# (label, where in a level's summary, how to print it); the percentiles people compare.
LEVEL_METRICS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("completed", ("completed",), "{:.0f}"),
    ("failed", ("failed",), "{:.0f}"),
    ("request throughput req/s", ("request_throughput",), "{:.2f}"),
    ("output throughput tok/s", ("output_throughput",), "{:.1f}"),
    ("TTFT median ms", ("ttft_ms", "median"), "{:.2f}"),
    ("TTFT p99 ms", ("ttft_ms", "p99"), "{:.2f}"),
    ("TPOT median ms", ("tpot_ms", "median"), "{:.2f}"),
    ("TPOT p99 ms", ("tpot_ms", "p99"), "{:.2f}"),
    ("ITL median ms", ("itl_ms", "median"), "{:.2f}"),
    ("E2EL median ms", ("e2el_ms", "median"), "{:.2f}"),
    ("E2EL p99 ms", ("e2el_ms", "p99"), "{:.2f}"),
)
SWITCH_METRICS = ("total_s", "load_s", "wake_s", "first_token_s")
MIX_SWITCH_METRICS = SWITCH_METRICS[:-1]  # a mix times no first token of its own after a switch
# What a run was made with, beside its levels; a difference is noted.
RUN_CONDITIONS = ("model", "url", "input_len", "output_len", "endpoint", "prompts")
MIX_CONDITIONS = ("url", "input_len", "output_len", "endpoint", "prompts", "request_rate", "burstiness", "ramp_up",
                  "requests", "seed")
KINDS = {"run": "a bench run", "mix": "a bench-mix result"}
SAVED_HINT = "pass files written by `animllm bench --save FILE` or `animllm bench-mix --save FILE`"


@dataclass
class MetricRow:
    metric: str
    a: float | None
    b: float | None
    ratio: float | None               # b / a; None where either is missing or a is 0
    format: str = field(default="{:.2f}", repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "a": self.a, "b": self.b, "ratio": self.ratio}


@dataclass
class LevelComparison:
    level: str                        # "concurrency 4" or "2 req/s"
    rows: list[MetricRow]


@dataclass
class Comparison:
    a: str                            # the files, as given
    b: str
    a_model: str                      # a mix's: its models and weights, e.g. "coder:3,vision:1"
    b_model: str
    levels: list[LevelComparison]     # a mix's: "model coder", ..., "all models"
    switch: list[MetricRow] | None    # median seconds, when both runs timed switches
    notes: list[str]                  # what differs between the runs besides the results

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "a_model": self.a_model, "b_model": self.b_model,
                "levels": [{"level": lc.level, "metrics": [row.to_json() for row in lc.rows]} for lc in self.levels],
                "switch": None if self.switch is None else [row.to_json() for row in self.switch],
                "notes": self.notes}


def read_saved(path: Path) -> dict[str, Any]:
    """A run saved by `bench --save FILE` or `bench-mix --save FILE`, checked to be one."""
    try:
        text = path.read_text()
    except OSError as exc:  # missing, a directory, not readable
        raise UsageError(f"{path}: {exc.strerror or exc}", hint=SAVED_HINT) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path}: not JSON ({exc})", hint=SAVED_HINT) from None
    if not isinstance(data, dict) or "schema_version" not in data or \
            ("models" if data.get("kind") == "mix" else "levels") not in data:
        raise UsageError(f"{path}: not a bench result (no schema_version, or neither a run's levels nor a mix's "
                         "models)", hint=SAVED_HINT)
    if data["schema_version"] != SCHEMA_VERSION:
        raise UsageError(f"{path}: bench schema_version {data['schema_version']}; this animllm reads {SCHEMA_VERSION}")
    return read_infinities(data)


def kind(run: dict[str, Any]) -> str:
    """"mix" (bench-mix) or "run" (bench)."""
    return "mix" if run.get("kind") == "mix" else "run"


def compare(a_path: Path, a: dict[str, Any], b_path: Path, b: dict[str, Any]) -> Comparison:
    if kind(a) != kind(b):
        raise UsageError(f"{a_path} is {KINDS[kind(a)]} and {b_path} {KINDS[kind(b)]}: bench-compare sets two runs "
                         "of one kind side by side", hint="compare two bench runs, or two bench-mix results")
    a_parts, b_parts = _parts(a), _parts(b)
    labels = list(a_parts) + [label for label in b_parts if label not in a_parts]
    levels = [LevelComparison(label, [_level_row(metric, path, fmt, a_parts.get(label), b_parts.get(label))
                                      for metric, path, fmt in LEVEL_METRICS]) for label in labels]
    return Comparison(a=str(a_path), b=str(b_path), a_model=_models(a), b_model=_models(b), levels=levels,
                      switch=_switch_rows(a, b), notes=_differences(a, b))


def _parts(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What is compared, by label: a run's levels (matched by what they held fixed; the
    burstiness is a note), a mix's models and all of them together."""
    if kind(run) == "mix":
        return {**{f"model {model['model']}": model["summary"] for model in run["models"]},
                "all models": run["overall"]}
    return {level_label(level["concurrency"], level["request_rate"], level.get("ramp_up")): level["summary"]
            for level in run["levels"]}


def _models(run: dict[str, Any]) -> str:
    if kind(run) == "mix":
        return ",".join(f"{model['model']}:{model['weight']:g}" for model in run["models"])
    return run["model"]


def _level_row(metric: str, path: tuple[str, ...], fmt: str, a: dict | None, b: dict | None) -> MetricRow:
    return _row(metric, _dig(a, path), _dig(b, path), fmt)


def _dig(summary: dict[str, Any] | None, path: tuple[str, ...]) -> float | None:
    value: Any = summary
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _row(metric: str, a: float | None, b: float | None, fmt: str = "{:.2f}") -> MetricRow:
    ratio = b / a if a and b is not None else None
    return MetricRow(metric, a, b, ratio, fmt)


def _switch_rows(a: dict[str, Any], b: dict[str, Any]) -> list[MetricRow] | None:
    a_summary, b_summary = ((run.get("switch") or {}).get("summary") for run in (a, b))
    if not a_summary or not b_summary:
        return None
    return [_row(f"switch {name} median", (a_summary.get(name) or {}).get("median"),
                 (b_summary.get(name) or {}).get("median"))
            for name in (MIX_SWITCH_METRICS if kind(a) == "mix" else SWITCH_METRICS)]


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What makes the two runs not like for like: said, since a ratio hides it."""
    mix = kind(a) == "mix"
    notes = [f"{key} differs: {_shown(a.get(key))} vs {_shown(b.get(key))}"
             for key in (MIX_CONDITIONS if mix else RUN_CONDITIONS) if a.get(key) != b.get(key)]
    if mix:
        if _models(a) != _models(b):
            notes.append(f"models or weights differ: {_models(a)} vs {_models(b)}")
        a_slos, b_slos = ({model["model"]: model.get("goodput_slo") for model in run["models"]} for run in (a, b))
        notes += [f"goodput SLO of {name} differs: {_slo(a_slos[name])} vs {_slo(b_slos[name])}"
                  for name in a_slos if name in b_slos and a_slos[name] != b_slos[name]]
        return notes
    if a.get("goodput_slo") != b.get("goodput_slo"):
        notes.append(f"goodput SLO differs: {_slo(a.get('goodput_slo'))} vs {_slo(b.get('goodput_slo'))}")
    a_burst, b_burst = _burstiness(a), _burstiness(b)
    if a_burst and b_burst and a_burst != b_burst:
        notes.append(f"burstiness differs: {_listed(a_burst)} vs {_listed(b_burst)}")
    a_sent, b_sent = _sent(a), _sent(b)
    if a_sent != b_sent:
        notes.append(f"requests per level differ: {_listed(a_sent)} vs {_listed(b_sent)}")
    only = set(_parts(a)) ^ set(_parts(b))
    if only:
        notes.append(f"levels in one run only: {', '.join(sorted(only))}")
    return notes


def _burstiness(run: dict[str, Any]) -> list[float]:
    """The burstiness of a run's arrivals at a rate (a fixed concurrency has none)."""
    return sorted({level.get("burstiness", 1.0) for level in run["levels"] if not level["concurrency"]})


def _sent(run: dict[str, Any]) -> list[int]:
    return sorted({level["summary"]["completed"] + level["summary"]["failed"] for level in run["levels"]})


def _slo(slo: dict[str, float | None] | None) -> str:
    return Slo(**slo).describe() if slo and Slo(**slo) else "none"


def _listed(values: list[float]) -> str:
    return ", ".join(_shown(value) for value in values)


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)

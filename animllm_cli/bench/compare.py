"""`bench-compare A.json B.json`: two saved runs side by side, level by level, with B/A.

Levels are matched by what they held fixed (concurrency 4, or 2 req/s); a level only one
run has is shown with a dash on the other side rather than dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animllm_cli.bench.results import SCHEMA_VERSION, level_label
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
    a_model: str
    b_model: str
    levels: list[LevelComparison]
    switch: list[MetricRow] | None    # median seconds, when both runs timed switches
    notes: list[str]                  # what differs between the runs besides the results

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "a_model": self.a_model, "b_model": self.b_model,
                "levels": [{"level": lc.level, "metrics": [row.to_json() for row in lc.rows]} for lc in self.levels],
                "switch": None if self.switch is None else [row.to_json() for row in self.switch],
                "notes": self.notes}


def read_saved(path: Path) -> dict[str, Any]:
    """A run saved by `bench --save FILE`, checked to be one."""
    try:
        text = path.read_text()
    except OSError as exc:  # missing, a directory, not readable
        raise UsageError(f"{path}: {exc.strerror or exc}", hint="pass files written by `animllm bench --save FILE`") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path}: not JSON ({exc})", hint="pass files written by `animllm bench --save FILE`") from None
    if not isinstance(data, dict) or "levels" not in data or "schema_version" not in data:
        raise UsageError(f"{path}: not a bench result (no levels or schema_version)",
                         hint="pass files written by `animllm bench --save FILE`")
    if data["schema_version"] != SCHEMA_VERSION:
        raise UsageError(f"{path}: bench schema_version {data['schema_version']}; this animllm reads {SCHEMA_VERSION}")
    return data


def compare(a_path: Path, a: dict[str, Any], b_path: Path, b: dict[str, Any]) -> Comparison:
    a_levels, b_levels = _by_label(a), _by_label(b)
    labels = list(a_levels) + [label for label in b_levels if label not in a_levels]
    levels = [LevelComparison(label, [_level_row(metric, path, fmt, a_levels.get(label), b_levels.get(label))
                                      for metric, path, fmt in LEVEL_METRICS]) for label in labels]
    return Comparison(a=str(a_path), b=str(b_path), a_model=a["model"], b_model=b["model"], levels=levels,
                      switch=_switch_rows(a, b), notes=_differences(a, b))


def _by_label(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {level_label(level["concurrency"], level["request_rate"], level.get("ramp_up"),
                        level.get("burstiness", 1.0)): level["summary"] for level in run["levels"]}


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
                 (b_summary.get(name) or {}).get("median")) for name in SWITCH_METRICS]


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What makes the two runs not like for like: said, since a ratio hides it."""
    notes = []
    for key in ("model", "url", "input_len", "output_len"):
        if a.get(key) != b.get(key):
            notes.append(f"{key} differs: {a.get(key)} vs {b.get(key)}")
    only = set(_by_label(a)) ^ set(_by_label(b))
    if only:
        notes.append(f"levels in one run only: {', '.join(sorted(only))}")
    return notes


def cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)

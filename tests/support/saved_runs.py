"""Saved bench runs for the tests of --plot and --compare: built from bench's own types and
written as `bench --json PATH` writes them, never hand-written JSON."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from animllm_cli.bench.metrics import Sample, summarize
from animllm_cli.bench.mix import MixModel, MixResult
from animllm_cli.bench.results import BenchResult, LevelResult, SwitchRun
from animllm_cli.bench.switching import summarize as summarize_switches
from animllm_cli.wire import SwitchReport
from animllm_cli.output import json_text


def _samples(rng: random.Random, n: int, ttft: float, tpot: float, tokens: int = 16) -> list[Sample]:
    samples = []
    for index in range(n):
        first = ttft * rng.uniform(0.8, 1.5)
        gaps = [tpot * rng.uniform(0.8, 1.2) for _ in range(tokens - 1)]
        samples.append(Sample(ok=True, start=float(index), latency=first + sum(gaps), ttft=first, itl=gaps,
                              prompt_tokens=32, output_tokens=tokens))
    return samples


def _switches(slower: float) -> SwitchRun:
    reports = [{**SwitchReport(from_model=a, to_model=b, outcome="ok", stop_s=1.2 * slower, vram_release_s=0.4,
                               load_s=20.0 * slower if kind == "cold" else None, wake_s=2.0 if kind == "wake" else None,
                               sleep_s=0.8 if kind == "wake" else None, total_s=22.0, load_kind=kind).to_json(),
                "first_token_s": 0.3}
               for a, b, kind in (("a", "b", "cold"), ("b", "a", "wake"), ("a", "b", "wake"))]
    return SwitchRun(count=3, switches=reports, summary=summarize_switches(reports), wakes=2, cold_loads=1)


def saved_run(path: Path, *, slower: float = 1.0, rate: bool = False, switches: bool = True,
              levels: tuple[int, ...] = (1, 4, 8), burstiness: float = 1.0, requests: int = 12,
              **conditions: Any) -> Path:
    """A run of `levels` (or as many request rates, at `burstiness`), with three switches
    unless told not to; `conditions`: more of BenchResult's fields (endpoint, prompts, goodput_slo)."""
    rng = random.Random(7)
    result = BenchResult(url="http://127.0.0.1:8000", model="tiny", input_len=32, output_len=16, **conditions)
    for level in levels:
        samples = _samples(rng, requests, 0.05 * level * slower, 0.01 * (1 + level / 8) * slower)
        result.levels.append(LevelResult(concurrency=None if rate else level, request_rate=float(level) if rate else None,
                                         summary=summarize(samples, 2.0 * slower),
                                         burstiness=burstiness if rate else 1.0))
    if switches:
        result.switch = _switches(slower)
    path.write_text(json_text(result) + "\n")
    return path


def saved_mix(path: Path, *, slower: float = 1.0, request_rate: float = 2.0, burstiness: float = 1.0,
              goodput_slo: dict[str, float | None] | None = None) -> Path:
    """A bench-mix of a:3 and b:1 at `request_rate`, with the three switches of saved_run."""
    rng = random.Random(11)
    samples = {name: [Sample(**{**vars(s), "model": name}) for s in _samples(rng, count, 0.2 * slower, 0.02 * slower)]
               for name, count in (("a", 9), ("b", 3))}
    models = [MixModel(name, weight, summarize(samples[name], 6.0), behind_switch=1, switches_in=1,
                       goodput_slo=goodput_slo) for name, weight in (("a", 3.0), ("b", 1.0))]
    result = MixResult(url="http://127.0.0.1:8000", request_rate=request_rate, burstiness=burstiness, ramp_up=None,
                       requests=12, input_len=32, output_len=16, endpoint="/v1/completions", prompts="random", seed=0,
                       duration_s=6.0, models=models, overall=summarize([*samples["a"], *samples["b"]], 6.0),
                       switch=_switches(slower), switching_s=2.0, switching_share=2.0 / 6.0)
    path.write_text(json_text(result) + "\n")
    return path

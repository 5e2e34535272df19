"""Saved bench runs for the tests of --plot and --compare: built from bench's own types and
written as `bench --json PATH` writes them, never hand-written JSON."""

from __future__ import annotations

import random
from pathlib import Path

from animllm_cli.bench.metrics import Sample, summarize
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


def saved_run(path: Path, *, slower: float = 1.0, rate: bool = False, switches: bool = True,
              levels: tuple[int, ...] = (1, 4, 8)) -> Path:
    """A run of `levels` (or as many request rates), with three switches unless told not to."""
    rng = random.Random(7)
    result = BenchResult(url="http://127.0.0.1:8000", model="tiny", input_len=32, output_len=16)
    for level in levels:
        samples = _samples(rng, 12, 0.05 * level * slower, 0.01 * (1 + level / 8) * slower)
        result.levels.append(LevelResult(concurrency=None if rate else level, request_rate=float(level) if rate else None,
                                         summary=summarize(samples, 2.0 * slower)))
    if switches:
        reports = [{**SwitchReport(from_model=a, to_model=b, outcome="ok", stop_s=1.2 * slower, vram_release_s=0.4,
                                   load_s=20.0 * slower if kind == "cold" else None, wake_s=2.0 if kind == "wake" else None,
                                   sleep_s=0.8 if kind == "wake" else None, total_s=22.0, load_kind=kind).to_json(),
                    "first_token_s": 0.3}
                   for a, b, kind in (("a", "b", "cold"), ("b", "a", "wake"), ("a", "b", "wake"))]
        result.switch = SwitchRun(count=3, switches=reports, summary=summarize_switches(reports), wakes=2, cold_loads=1)
    path.write_text(json_text(result) + "\n")
    return path

"""Per-request timings and their summary, defined as vLLM's serving benchmark defines them
(vllm/benchmarks/serve.py, `calculate_metrics`):

- TTFT: from sending the request to the first chunk that carries text.
- ITL: the gaps between successive text chunks, pooled over all requests.
- TPOT: per request, (E2EL - TTFT) / (output tokens - 1), for requests with more than one token.
- E2EL: from sending to the last byte.
- Throughputs: completed requests, output tokens, and input + output tokens, each over the
  wall time of the level. Token counts come from the server's `usage`.
- Goodput (with SLOs, bench/slo.py): completed requests that met every SLO given (the
  metric at most the SLO; a one-token answer's TPOT counts as 0), over the wall time.
- Percentiles interpolate linearly between samples, as numpy.percentile does.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from animllm_cli.bench.slo import NAMES, Slo


@dataclass
class Sample:
    ok: bool
    start: float                       # perf_counter when sent
    latency: float = 0.0               # E2EL, seconds
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    model: str | None = None           # whose request (bench-mix)

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tpot": self.tpot}


def percentile(values: list[float], q: float) -> float:
    """numpy.percentile's default ('linear') method."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Distribution:
    """One metric over a level, in milliseconds."""
    mean: float
    median: float
    p90: float
    p99: float


@dataclass
class LevelSummary:
    """A level's results; the field names are the keys of `summary` in `bench --json`."""
    completed: int
    failed: int
    errors: list[str]                  # up to five distinct messages
    duration_s: float
    input_tokens: int
    output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft_ms: Distribution
    tpot_ms: Distribution
    itl_ms: Distribution
    e2el_ms: Distribution
    good_requests: int | None = None   # with SLOs (--goodput): completed requests that met them all
    request_goodput: float | None = None  # good_requests per second, as vLLM's request_goodput


def distribution_ms(values: list[float]) -> Distribution:
    scaled = [v * 1000 for v in values]
    return Distribution(mean=statistics.fmean(scaled) if scaled else 0.0, median=percentile(scaled, 50),
                        p90=percentile(scaled, 90), p99=percentile(scaled, 99))


def summarize(samples: list[Sample], duration_s: float, slo: Slo | None = None) -> LevelSummary:
    done = [s for s in samples if s.ok]
    output_tokens = sum(s.output_tokens for s in done)
    input_tokens = sum(s.prompt_tokens for s in done)
    duration = max(duration_s, 1e-9)
    good = good_count(samples, slo) if slo else None
    return LevelSummary(
        completed=len(done),
        failed=len(samples) - len(done),
        errors=sorted({s.error for s in samples if s.error})[:5],
        duration_s=duration_s,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        request_throughput=len(done) / duration,
        output_throughput=output_tokens / duration,
        total_token_throughput=(input_tokens + output_tokens) / duration,
        ttft_ms=distribution_ms([s.ttft for s in done if s.ttft is not None]),
        tpot_ms=distribution_ms([s.tpot for s in done if s.tpot is not None]),
        itl_ms=distribution_ms([gap for s in done for gap in s.itl]),
        e2el_ms=distribution_ms([s.latency for s in done]),
        good_requests=good,
        request_goodput=None if good is None else good / duration,
    )


def is_good(sample: Sample, slo: Slo) -> bool:
    if not sample.ok:
        return False
    measured = {"ttft": sample.ttft or 0.0, "tpot": sample.tpot or 0.0, "e2el": sample.latency}
    return all(getattr(slo, f"{name}_ms") is None or measured[name] <= getattr(slo, f"{name}_ms") / 1000
               for name in NAMES)


def good_count(samples: list[Sample], slo: Slo) -> int:
    return sum(is_good(sample, slo) for sample in samples)

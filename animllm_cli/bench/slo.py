"""SLOs and goodput, as vLLM's serving benchmark defines them (vllm/benchmarks/serve.py:
`parse_goodput`, `check_goodput_args`, `calculate_metrics`): `--goodput ttft:MS tpot:MS
e2el:MS`; a completed request is good when it meets every SLO given (its metric at most
the SLO), a one-token answer's TPOT counting as 0; goodput is good requests per second."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from animllm_cli.bench.metrics import Sample
from animllm_cli.errors import UsageError

NAMES = ("ttft", "tpot", "e2el")


@dataclass(frozen=True)
class Slo:
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def describe(self) -> str:
        return ", ".join(f"{name.upper()} <= {getattr(self, f'{name}_ms'):g} ms" for name in NAMES
                         if getattr(self, f"{name}_ms") is not None)


def parse_goodput(values: list[str]) -> Slo:
    """The option's values: each may hold several pairs, apart by spaces or commas."""
    found: dict[str, float] = {}
    for pair in (p for value in values for p in re.split(r"[\s,]+", value) if p):
        name, colon, number = pair.partition(":")
        if not colon:
            raise UsageError(f"--goodput {pair!r}: expected NAME:MS, e.g. ttft:500", hint=f"names: {', '.join(NAMES)}")
        if name not in NAMES:
            raise UsageError(f"--goodput {pair!r}: unknown SLO {name!r}", hint=f"names: {', '.join(NAMES)}")
        try:
            ms = float(number)
        except ValueError:
            raise UsageError(f"--goodput {pair!r}: {number!r} is not a number of milliseconds") from None
        if ms < 0:
            raise UsageError(f"--goodput {pair!r}: an SLO cannot be negative")
        if name in found:
            raise UsageError(f"--goodput {pair!r}: {name} is given twice")
        found[name] = ms
    return Slo(**{f"{name}_ms": ms for name, ms in found.items()})


def is_good(sample: Sample, slo: Slo) -> bool:
    if not sample.ok:
        return False
    measured = {"ttft": sample.ttft or 0.0, "tpot": sample.tpot or 0.0, "e2el": sample.latency}
    return all(getattr(slo, f"{name}_ms") is None or measured[name] <= getattr(slo, f"{name}_ms") / 1000
               for name in NAMES)


def good_count(samples: list[Sample], slo: Slo) -> int:
    return sum(is_good(sample, slo) for sample in samples)

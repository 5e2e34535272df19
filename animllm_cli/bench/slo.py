"""SLOs as vLLM's serving benchmark spells them (vllm/benchmarks/serve.py: `parse_goodput`,
`check_goodput_args`): `--goodput ttft:MS tpot:MS e2el:MS`. Which requests meet them is
bench/metrics.py's, beside vLLM's other definitions."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from animllm_cli.errors import UsageError

NAMES = ("ttft", "tpot", "e2el")
HINT = f"NAME:MS pairs, e.g. --goodput ttft:500 tpot:50; names: {', '.join(NAMES)}"


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
    """The option's values: each may hold several pairs, apart by spaces or commas.
    Stricter than vLLM, which lets a repeated name's last value win and takes `nan`
    (an SLO no request can meet): both are a typo, refused here."""
    found: dict[str, float] = {}
    for pair in (p for value in values for p in re.split(r"[\s,]+", value) if p):
        name, ms = _slo_pair(pair)
        if name in found:
            raise UsageError(f"--goodput {pair!r}: {name} is given twice", hint=HINT)
        found[name] = ms
    return Slo(**{f"{name}_ms": ms for name, ms in found.items()})


def _slo_pair(pair: str) -> tuple[str, float]:
    name, colon, number = pair.partition(":")
    if not colon:
        raise UsageError(f"--goodput {pair!r}: expected NAME:MS, e.g. ttft:500", hint=HINT)
    if name not in NAMES:
        raise UsageError(f"--goodput {pair!r}: unknown SLO {name!r}", hint=HINT)
    try:
        ms = float(number)
    except ValueError:
        ms = math.nan
    if math.isnan(ms):
        raise UsageError(f"--goodput {pair!r}: {number!r} is not a number of milliseconds", hint=HINT)
    if ms < 0:
        raise UsageError(f"--goodput {pair!r}: an SLO cannot be negative", hint=HINT)
    return name, ms

"""When each request of a level is sent, as vLLM's serving benchmark decides it
(vllm/benchmarks/serve.py: `get_request`, `_get_current_request_rate`): each gap is drawn
from a gamma distribution of shape `burstiness` and mean 1/rate (1: Poisson), the rate
fixed or climbing from a start to an end rate over the requests (ramp-up); without a
ramp-up the gaps are scaled so that N requests take exactly N/rate seconds, which keeps
the throughput of one seed comparable with another's. The draws come from Python's
`random` (bench must import without numpy): the same distribution as vLLM's
`np.random.gamma`, not the same sequence for one seed."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from animllm_cli.errors import UsageError

STRATEGIES = ("linear", "exponential")


@dataclass(frozen=True)
class RampUp:
    strategy: str        # linear | exponential
    start_rps: float
    end_rps: float

    def describe(self) -> str:
        return f"{self.strategy} {self.start_rps:g}→{self.end_rps:g} req/s"

    def rate(self, index: int, count: int) -> float:
        progress = index / max(count - 1, 1)
        if self.strategy == "linear":
            return self.start_rps + (self.end_rps - self.start_rps) * progress
        return self.start_rps * (self.end_rps / self.start_rps) ** progress


def parse_ramp_up(text: str) -> RampUp:
    """`linear:1:10` or `exponential:0.5:8`: the strategy, the first and the last rate."""
    parts = text.split(":")
    example = "e.g. linear:1:10 (from 1 to 10 req/s) or exponential:0.5:8"
    if len(parts) != 3 or parts[0] not in STRATEGIES:
        raise UsageError(f"--ramp-up {text!r}: expected {'|'.join(STRATEGIES)}:START:END", hint=example)
    try:
        start, end = float(parts[1]), float(parts[2])
    except ValueError:
        raise UsageError(f"--ramp-up {text!r}: START and END are requests per second", hint=example) from None
    if not (0 < start < math.inf and 0 < end < math.inf):
        raise UsageError(f"--ramp-up {text!r}: START and END must be above 0 and finite", hint=example)
    # vLLM refuses START > END; the same formulas ramp down as well (a cool-down), so it is allowed.
    return RampUp(parts[0], start, end)


def check_burstiness(burstiness: float) -> None:
    if not burstiness > 0:
        raise UsageError(f"--burstiness {burstiness:g}: must be above 0 (1 is Poisson)")


def sweep(concurrency: str, request_rate: str | None, burstiness: float, ramp_up: str | None, *,
          concurrency_given: bool, burstiness_given: bool,
          plotting: bool) -> tuple[list[int], list[float], RampUp | None]:
    """`bench`'s levels as (concurrency levels, request rates, ramp-up): one of the three
    describes them; the options are as the user gave them (`*_given`: on the command line)."""
    check_burstiness(burstiness)
    if burstiness_given and not (request_rate or ramp_up):
        raise UsageError("--burstiness shapes arrivals at a rate: give --request-rate or --ramp-up")
    if concurrency_given and (request_rate or ramp_up):
        what = "--request-rate" if request_rate else "--ramp-up"
        raise UsageError(f"--concurrency and {what} both say how requests arrive: give one")
    if ramp_up:
        if request_rate:
            raise UsageError("--ramp-up and --request-rate both set the rate: give one")
        if plotting:
            raise UsageError("--plot draws levels against concurrency or rate; a ramp-up is one level of many "
                             "rates: drop --plot", hint="sweep rates instead: --request-rate 1,2,4,8 --plot FILE")
        return [], [], parse_ramp_up(ramp_up)
    if request_rate:
        return [], _levels("--request-rate", request_rate, float, "requests per second like 2 or 0.5,1,2",
                           minimum=0.01), None
    return _levels("--concurrency", concurrency, int, "numbers like 1,4,10", minimum=1), [], None


def one_rate(request_rate: float, burstiness: float, ramp_up: str | None, *,
             rate_given: bool) -> tuple[float | None, RampUp | None]:
    """`bench-mix`'s one level: arrivals at a rate, or climbing from one rate to another."""
    check_burstiness(burstiness)
    if not ramp_up:
        return request_rate, None
    if rate_given:
        raise UsageError("--ramp-up and --request-rate both set the rate: give one")
    return None, parse_ramp_up(ramp_up)


def _levels(option: str, text: str, kind, example: str, *, minimum: float) -> list:
    try:
        levels = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected {example}") from None
    if not levels or any(level < minimum for level in levels):
        raise UsageError(f"{option} {text!r}: each level must be at least {minimum:g}")
    return levels


def send_offsets(count: int, rate: float | None, *, burstiness: float = 1.0, ramp_up: RampUp | None = None,
                 seed: int = 0) -> list[float]:
    """Seconds from the level's start at which each request is sent, non-decreasing.
    No rate (or an infinite one) and no ramp-up: all at once."""
    check_burstiness(burstiness)
    if ramp_up is None and rate is not None and not rate > 0:
        raise UsageError(f"--request-rate {rate:g}: must be above 0 requests per second (inf: all at once)")
    if ramp_up is None and (rate is None or math.isinf(rate)):
        return [0.0] * count
    rng = random.Random(seed)
    offsets, total = [], 0.0
    for index in range(count):
        total += _gap(rng, ramp_up.rate(index, count) if ramp_up else rate, burstiness)
        offsets.append(total)
    if ramp_up is None and offsets and offsets[-1] > 0:
        scale = (count / rate) / offsets[-1]
        offsets = [offset * scale for offset in offsets]
    return offsets


def _gap(rng: random.Random, rate: float, burstiness: float) -> float:
    if math.isinf(burstiness):
        return 1.0 / rate  # the gamma's limit, and vLLM's: a steady beat
    return rng.gammavariate(burstiness, 1.0 / (rate * burstiness))

"""When requests are sent (bench/arrivals.py), as vLLM's `get_request` decides: gamma
gaps of shape `burstiness` around 1/rate, scaled to N/rate, or a ramp from one rate to
another whose rates are vLLM's own."""

from __future__ import annotations

import math
import statistics

import pytest

from animllm_cli.bench.arrivals import RampUp, parse_ramp_up, send_offsets
from animllm_cli.errors import UsageError


def gaps(offsets: list[float]) -> list[float]:
    return [b - a for a, b in zip([0.0, *offsets], offsets)]


def test_no_rate_is_all_at_once() -> None:
    assert send_offsets(5, None) == [0.0] * 5 and send_offsets(3, math.inf) == [0.0] * 3


def test_n_requests_take_n_over_rate_and_a_seed_repeats() -> None:
    offsets = send_offsets(50, 4.0, seed=7)
    assert offsets[-1] == pytest.approx(50 / 4.0) and offsets == sorted(offsets)
    assert send_offsets(50, 4.0, seed=7) == offsets and send_offsets(50, 4.0, seed=8) != offsets


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_burstiness_is_the_gamma_shape(burstiness: float) -> None:
    # The coefficient of variation of gamma gaps is 1/sqrt(shape): burstier below 1, steadier above.
    spread = gaps(send_offsets(4000, 10.0, burstiness=burstiness, seed=1))
    assert statistics.fmean(spread) == pytest.approx(0.1, rel=0.01)  # rescaled to N/rate exactly
    cv = statistics.pstdev(spread) / statistics.fmean(spread)
    assert cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.1)


def test_infinite_burstiness_is_a_steady_beat() -> None:
    assert gaps(send_offsets(5, 2.0, burstiness=math.inf)) == pytest.approx([0.5] * 5)


@pytest.mark.vllm
@pytest.mark.parametrize("strategy", ["linear", "exponential"])
def test_ramp_up_rates_are_vllms(strategy: str) -> None:
    from vllm.benchmarks.serve import _get_current_request_rate

    ramp = RampUp(strategy, 2.0, 32.0)
    for index in (0, 7, 19, 39):
        assert ramp.rate(index, 40) == pytest.approx(_get_current_request_rate(strategy, 2, 32, index, 40, 1.0))
    offsets = send_offsets(40, None, ramp_up=ramp, burstiness=math.inf)
    assert gaps(offsets)[0] == pytest.approx(1 / 2.0) and gaps(offsets)[-1] == pytest.approx(1 / 32.0)
    assert offsets[-1] == pytest.approx(sum(1 / ramp.rate(i, 40) for i in range(40)))  # not rescaled


def test_ramp_up_spelling() -> None:
    assert parse_ramp_up("linear:1:10") == RampUp("linear", 1.0, 10.0)
    assert parse_ramp_up("exponential:0.5:8").describe() == "exponential 0.5→8 req/s"
    for bad in ("linear:1", "steep:1:2", "linear:a:2", "linear:0:5", "exponential:1:inf"):
        with pytest.raises(UsageError, match="--ramp-up"):
            parse_ramp_up(bad)
    assert parse_ramp_up("linear:8:2") == RampUp("linear", 8.0, 2.0)  # a ramp down: vLLM refuses it, bench not
    for burstiness, rate in ((0, 1.0), (-1, 1.0), (math.nan, 1.0), (1.0, 0.0), (1.0, -2.0), (1.0, math.nan)):
        with pytest.raises(UsageError, match="above 0"):
            send_offsets(3, rate, burstiness=burstiness)

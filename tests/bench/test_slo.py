"""SLOs and goodput (bench/slo.py): vLLM's `--goodput` spelling and rule, and, on a saved
set of samples, the same numbers as vLLM's own `calculate_metrics` for goodput and for
every summary figure bench reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from animllm_cli.bench.metrics import Sample, good_count, is_good, summarize
from animllm_cli.bench.slo import Slo, parse_goodput
from animllm_cli.errors import UsageError

SAVED = Path(__file__).parent / "data" / "saved_samples.json"


def saved() -> tuple[list[Sample], float]:
    data = json.loads(SAVED.read_text())
    return [Sample(**sample) for sample in data["samples"]], data["duration_s"]


@pytest.mark.parametrize("values", [["ttft:500 tpot:50"], ["ttft:500,tpot:50"], ["ttft:500", "tpot:50"]])
def test_goodput_pairs_however_written(values: list[str]) -> None:
    assert parse_goodput(values) == Slo(ttft_ms=500, tpot_ms=50)


def test_no_goodput_is_no_slo() -> None:
    assert not parse_goodput([]) and parse_goodput(["e2el:0"])  # an SLO of 0 ms is still an SLO
    assert parse_goodput(["e2el:3000", "ttft:1.5"]).describe() == "TTFT <= 1.5 ms, E2EL <= 3000 ms"


@pytest.mark.parametrize("pair, words", [
    ("speed:3", "unknown SLO 'speed'"), ("ttft", "expected NAME:MS"), ("ttft:fast", "not a number"),
    ("tpot:-1", "cannot be negative"), ("ttft:1 ttft:2", "given twice"), ("e2el:nan", "not a number"),
])
def test_goodput_refusals(pair: str, words: str) -> None:
    with pytest.raises(UsageError, match=words) as refused:
        parse_goodput([pair])
    assert repr(pair.split()[-1]) in refused.value.message and "names: ttft, tpot, e2el" in refused.value.hint


def test_the_rule_at_its_edges() -> None:
    at_the_slo = Sample(ok=True, start=0, latency=1.0, ttft=0.5, output_tokens=11)   # TPOT exactly 50 ms
    assert is_good(at_the_slo, Slo(ttft_ms=500, tpot_ms=50, e2el_ms=1000))          # equal is good
    assert not is_good(at_the_slo, Slo(ttft_ms=499.9))
    one_token = Sample(ok=True, start=0, latency=0.3, ttft=0.3, output_tokens=1)
    assert is_good(one_token, Slo(tpot_ms=0))                                       # its TPOT counts as 0
    failed = Sample(ok=False, start=0, latency=0.01, error="HTTP 500")
    assert not is_good(failed, Slo(e2el_ms=1e9)) and good_count([failed, one_token], Slo(e2el_ms=1e9)) == 1


@pytest.mark.vllm
@pytest.mark.parametrize("goodput", [{"ttft": 100}, {"tpot": 12}, {"e2el": 1000}, {"ttft": 150, "tpot": 12},
                                     {"ttft": 80, "tpot": 15, "e2el": 900}, {"tpot": 0},
                                     {"ttft": 50}, {"ttft": 50, "tpot": 20}, {"e2el": 1310}])  # samples sit at these
def test_same_numbers_as_vllm_on_saved_samples(goodput: dict[str, float]) -> None:
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
    from vllm.benchmarks.serve import calculate_metrics

    samples, duration = saved()
    outputs = [RequestFuncOutput(success=s.ok, latency=s.latency, output_tokens=s.output_tokens, ttft=s.ttft or 0.0,
                                 itl=list(s.itl), prompt_len=s.prompt_tokens, start_time=s.start, error=s.error or "")
               for s in samples]
    theirs, _ = calculate_metrics(input_requests=[], outputs=outputs, dur_s=duration, tokenizer=None,
                                  selected_percentiles=[50, 90, 99], goodput_config_dict=dict(goodput))
    ours = summarize(samples, duration, parse_goodput([f"{k}:{v}" for k, v in goodput.items()]))

    assert ours.request_goodput == theirs.request_goodput            # the same requests judged good
    assert 0 < ours.good_requests < ours.completed  # the SLOs tell requests apart: a test that can fail
    assert (ours.completed, ours.failed) == (theirs.completed, theirs.failed)
    assert (ours.input_tokens, ours.output_tokens) == (theirs.total_input, theirs.total_output)
    for ours_value, theirs_value in [(ours.request_throughput, theirs.request_throughput),
                                     (ours.output_throughput, theirs.output_throughput),
                                     (ours.total_token_throughput, theirs.total_token_throughput)]:
        assert ours_value == pytest.approx(theirs_value, rel=1e-12)
    for metric in ("ttft", "tpot", "itl", "e2el"):
        mine = getattr(ours, f"{metric}_ms")
        percentiles = dict(getattr(theirs, f"percentiles_{metric}_ms"))
        expected = [getattr(theirs, f"mean_{metric}_ms"), getattr(theirs, f"median_{metric}_ms"),
                    percentiles[90], percentiles[99]]
        assert [mine.mean, mine.median, mine.p90, mine.p99] == pytest.approx(expected, rel=1e-9), metric

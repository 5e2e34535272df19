"""`animllm bench-mix`: several models at once through the gateway (fake engines, a
pool of one engine, so that every change of model is a switch): per-model latency that
includes the waits for switches, and the switches the gateway made meanwhile."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import httpx
import pytest

from tests.support.gateways import bench_gateway
from tests.support.gateways import fake_gateway_config
from tests.support.helpers import run_cli, run_json


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with bench_gateway(tmp_path, monkeypatch, "{ttft_s_max: 60, tokens_per_s_min: 1, switch_s_max: 60}",
                       sections={"pool": {"max_engines": 1}, "scheduler": {"max_wait_s": 0.5}}) as running:
        yield running


def test_mix_reports_each_model_and_the_switches(gateway) -> None:
    # alpha: a's alias; code: b's task. a is loaded at the start, so b's first request waits for a switch.
    data = run_json("bench-mix", "alpha:3,code:1", "--request-rate", "20", "-n", "16", "--input-len", "6",
                    "--output-len", "4", "--seed", "3", "--samples", "--check", "--json")
    assert data["kind"] == "mix" and data["requests"] == 16
    assert [(m["model"], m["weight"]) for m in data["models"]] == [("a", 3.0), ("b", 1.0)]
    by_model = {m["model"]: m for m in data["models"]}
    samples = data["samples"]
    for name, model in by_model.items():
        assert model["summary"]["completed"] == sum(1 for s in samples if s["model"] == name and s["ok"]) > 0
    assert data["overall"]["completed"] == 16 and data["overall"]["failed"] == 0

    into_b = [s for s in data["switch"]["switches"] if s["to_model"] == "b"]
    assert into_b and all(s["outcome"] == "ok" and s["total_s"] > 0 for s in data["switch"]["switches"])
    assert by_model["b"]["switches_in"] == len(into_b) and by_model["b"]["behind_switch"] >= 1
    # The first request for b waited through b's load: its TTFT holds the switch.
    first_b = min((s for s in samples if s["model"] == "b"), key=lambda s: s["start"])
    assert first_b["ttft"] >= into_b[0]["load_s"]
    assert 0 < data["switching_s"] <= data["duration_s"]
    assert data["switching_share"] == pytest.approx(data["switching_s"] / data["duration_s"])
    assert data["switch"]["summary"]["total_s"]["median"] > 0 and data["switch"]["count"] >= len(into_b)
    metrics = {row["metric"] for row in data["check"]}
    assert {"a: TTFT median (s)", "b: TTFT median (s)", "b: switch median (s)"} <= metrics
    assert all(row["ok"] for row in data["check"])


def test_mix_tables_and_a_missed_expectation(gateway) -> None:
    result = run_cli("bench-mix", "a,b", "--request-rate", "20", "-n", "6", "--output-len", "2", "--check",
                     env={"ANIMLLM_EXPECTATIONS__P__SWITCH_S_MAX": "0.000001"})
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "Switches during the run" in result.stdout and "switching:" in result.stderr
    assert "b: switch median (s)" in result.stdout and "MISSED" in result.stdout


def test_switch_history_since(gateway) -> None:
    history = httpx.get(f"{gateway.url}/admin/switches").json()
    assert history["recorded"] >= 1 and history["capacity"] >= 1 and history["switches"][0]["to_model"] == "a"
    assert httpx.get(f"{gateway.url}/admin/switches", params={"since": "9e12"}).json()["switches"] == []
    assert httpx.get(f"{gateway.url}/admin/switches", params={"since": "soon"}).status_code == 400


@pytest.mark.parametrize("args, words", [
    (["a:1"], "at least two models"),
    (["a:x,b"], "is not a number"),
    (["a:0,b"], "must be above 0"),
    (["a,alpha"], "named twice"),
    (["a,b", "--switch", "a,b"], "No such option: --switch"),      # a mix measures from the gateway's state
    (["a,b", "--warmup", "1"], "No such option: --warmup"),
    (["a,b", "--plot", "m.svg"], "No such option: --plot"),
    (["a,b", "--concurrency", "2"], "No such option: --concurrency"),  # arrivals are at a rate
    (["a,b", "a"], "unexpected argument 'a'"),
    (["a,b", "--request-rate", "1,2"], "Invalid value for '--request-rate'"),  # one rate, not a sweep
    (["a,b", "--request-rate", "1", "--ramp-up", "linear:1:2"], "give one"),
    (["--goodput", "ttft:1", "tpot:2"], "name the models"),
])
def test_mix_refusals(args: list[str], words: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANIMLLM_CONFIG", str(fake_gateway_config(tmp_path)))
    result = run_cli("bench-mix", *args)
    assert result.exit_code == 2 and words in result.stderr, result.stderr


def test_check_leaves_out_a_model_the_draw_sent_nothing() -> None:
    from animllm_cli.bench.expectations import check_mix
    from animllm_cli.bench.metrics import Sample, summarize
    from animllm_cli.bench.mix import MixModel
    from animllm_cli.config.schema import Expectation

    expectation = Expectation(ttft_s_max=1, tokens_per_s_min=10)
    served = summarize([Sample(ok=True, start=0, latency=0.5, ttft=0.2, output_tokens=11)], 1.0)
    models = [MixModel("a", 3, served, behind_switch=0, switches_in=0),
              MixModel("b", 1, summarize([], 1.0), behind_switch=0, switches_in=0)]
    rows = check_mix({"a": expectation, "b": expectation}, models, [])
    assert [row.metric for row in rows] == ["a: TTFT median (s)", "a: tokens/s per stream"]
    assert all(row.ok for row in rows)


def test_a_model_that_never_loads_fails_the_check_and_its_failed_switches_stand_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # b's engine exits while starting: every switch into b fails, and so does every request for it.
    with bench_gateway(tmp_path, monkeypatch, "{ttft_s_max: 60, switch_s_max: 60}", crash_models="org/model-b",
                       sections={"pool": {"max_engines": 1}, "scheduler": {"max_wait_s": 0.5}}):
        result = run_cli("bench-mix", "a,b", "--request-rate", "20", "-n", "6", "--output-len", "2", "--check",
                         "--json")
    assert result.exit_code == 1, result.stderr
    data = json.loads(result.stdout)
    b = {m["model"]: m for m in data["models"]}["b"]
    failed_into_b = [s for s in data["switch"]["switches"] if s["to_model"] == "b" and s["outcome"] == "failed"]
    assert b["summary"]["completed"] == 0 and b["summary"]["failed"] > 0 and failed_into_b
    assert b["switches_in"] == 0 and b["switches_failed"] == len(failed_into_b)
    rows = {row["metric"]: row for row in data["check"]}
    assert not rows["b: requests completed"]["ok"]
    assert "b: TTFT median (s)" not in rows and "b: switch median (s)" not in rows
    ok_totals = sorted(s["total_s"] for s in data["switch"]["switches"] if s["outcome"] == "ok")
    # The run's switch median is of the switches that happened: a failed one is no switch time.
    assert data["switch"]["summary"]["total_s"]["median"] == pytest.approx(statistics.median(ok_totals))


def test_a_failed_switch_history_read_keeps_the_measured_run(gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    from animllm_cli.gateway import routes_admin

    history, reads = routes_admin.SwitchHistory, []

    def answered_once(**fields):  # the read before the run answers; the one after it fails (HTTP 500)
        reads.append(fields)
        if len(reads) > 1:
            raise RuntimeError("the switch history is gone")
        return history(**fields)

    monkeypatch.setattr(routes_admin, "SwitchHistory", answered_once)
    result = run_cli("bench-mix", "a,b", "--request-rate", "20", "-n", "6", "--output-len", "2", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["overall"]["completed"] == 6 and data["switch"] is None and data["switching_s"] is None
    assert "500" in data["switch_error"] and "could not be read" in result.stderr
    reads.clear()
    human = run_cli("bench-mix", "a,b", "--request-rate", "20", "-n", "4", "--output-len", "2")
    assert human.exit_code == 0 and "done/failed" in human.stdout and "could not be read" in human.stderr


def test_a_mix_with_infinite_burstiness_and_slo_is_standard_json(tmp_path: Path) -> None:
    import math

    from animllm_cli.bench.compare import read_saved
    from tests.support.saved_runs import saved_mix

    path = saved_mix(tmp_path / "mix.json", burstiness=math.inf, goodput_slo={"ttft_ms": math.inf, "tpot_ms": 50,
                                                                              "e2el_ms": None})
    text = path.read_text()
    assert "Infinity" not in text and json.loads(text)["burstiness"] == "inf"
    data = read_saved(path)
    assert data["burstiness"] == math.inf and data["models"][0]["goodput_slo"]["ttft_ms"] == math.inf

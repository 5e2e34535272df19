"""`animllm bench` against the gateway over fake engines: the JSON and the --check gate."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.gateways import bench_gateway
from tests.support.helpers import run_cli

FIELDS = {"completed", "failed", "errors", "duration_s", "input_tokens", "output_tokens", "request_throughput",
          "output_throughput", "total_token_throughput", "ttft_ms", "tpot_ms", "itl_ms", "e2el_ms", "good_requests",
          "request_goodput"}


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with bench_gateway(tmp_path, monkeypatch, "{ttft_s_max: 5, tokens_per_s_min: 1, switch_s_max: 60}") as running:
        yield running


def test_sweep_and_switch_json(gateway, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--concurrency", "1,3", "-n", "6", "--input-len", "20", "--output-len", "8",
                     "--switch", "a,b", "--switch-rounds", "1", "--save", str(out), "--samples",
                     "--plot", str(tmp_path / "bench.svg"))
    assert result.exit_code == 0, result.stderr
    data = json.loads(out.read_text())
    assert [level["concurrency"] for level in data["levels"]] == [1, 3]
    for level in data["levels"]:
        assert set(level["summary"]) == FIELDS
        assert level["summary"]["completed"] == 6 and level["summary"]["failed"] == 0
        assert level["summary"]["output_tokens"] == 6 * 8 and level["summary"]["input_tokens"] == 6 * 20
        assert len(level["samples"]) == 6 and all(len(s["itl"]) == 7 for s in level["samples"])
    switch = data["switch"]
    assert switch["count"] == 2 and [s["to_model"] for s in switch["switches"]] == ["b", "a"]
    assert set(switch["summary"]) == {"stop_s", "vram_release_s", "load_s", "total_s", "first_token_s", "sleep_s",
                                      "wake_s", "first_token_after_wake_s", "first_token_after_cold_s"}
    assert switch["summary"]["vram_release_s"] is None    # no GPU here: said, not invented
    assert (switch["wakes"], switch["cold_loads"]) == (0, 2) and switch["summary"]["wake_s"] is None
    assert switch["summary"]["first_token_after_cold_s"] == switch["summary"]["first_token_s"]
    assert "TTFT ms mean / median / p90 / p99" in result.stdout
    plot = (tmp_path / "bench.svg").read_text()  # the sweep and its switches, drawn after the run
    assert "Time to first token" in plot and "b → a (cold)" in plot and "plot written to" in result.stderr


def test_request_rate_and_json_on_stdout(gateway) -> None:
    result = run_cli("bench", "--request-rate", "40,80", "-n", "5", "--input-len", "8", "--output-len", "4", "--json")
    data = json.loads(result.stdout)
    assert [level["request_rate"] for level in data["levels"]] == [40, 80]  # a sweep of rates, as of concurrency
    assert all(level["concurrency"] is None and level["summary"]["completed"] == 5 for level in data["levels"])
    assert "samples" not in data["levels"][0]


def test_check_passes_when_met_and_fails_when_out_of_reach(gateway, tmp_path: Path) -> None:
    ok = run_cli("bench", "-n", "4", "--input-len", "8", "--output-len", "4", "--check")
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    assert "MISSED" not in ok.stdout
    strict = run_cli("bench", "-n", "4", "--input-len", "8", "--output-len", "4", "--check",
                     env={"ANIMLLM_EXPECTATIONS__P__TTFT_S_MAX": "0.000001"})
    assert strict.exit_code == 1 and "MISSED" in strict.stdout and "TTFT median" in strict.stdout


def test_check_without_expectations_fails_before_running(gateway) -> None:
    result = run_cli("bench", "-n", "2", "--check", env={"ANIMLLM_EXPECTATIONS__P": "null"})
    assert result.exit_code == 2 and "no expectations for profile 'p'" in result.stderr


def test_bad_concurrency_or_rate_list() -> None:
    assert run_cli("bench", "--concurrency", "1,x").exit_code == 2
    assert run_cli("bench", "--concurrency", "0").exit_code == 2
    assert "each level must be at least 0.01" in run_cli("bench", "--request-rate", "1,0").stderr
    assert run_cli("bench", "--request-rate", "fast").exit_code == 2


def test_the_demo_benchmark_step(gateway) -> None:
    """The demo's step 5 builds its own plan for the same runner (the engine tier runs the
    whole demo; this catches a plan it can no longer build in seconds)."""
    from animllm_cli.demo.run import _ServedGateway
    from animllm_cli.output import Output

    served = object.__new__(_ServedGateway)
    served.state, served.key, served.out = SimpleNamespace(url=gateway.url), None, Output(quiet=True)
    levels = served.bench("a")
    assert set(levels) == {1, 4} and all(summary.completed == 8 for summary in levels.values())


def _standard_json(text: str):
    """JSON as the standard has it: Infinity and NaN are not JSON."""
    def refuse(constant: str):
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_check_fails_a_level_where_no_request_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The gateway cuts every request at 0.2 s, long before its 400 tokens: nothing completes,
    # and a median of nothing (0) would pass a TTFT target.
    with bench_gateway(tmp_path, monkeypatch, "{ttft_s_max: 5}", limits={"total_timeout_s": 0.2}):
        result = run_cli("bench", "--concurrency", "1,2", "-n", "2", "--input-len", "8", "--output-len", "400",
                         "--warmup", "0", "--check")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "concurrency 1: requests completed" in result.stdout and "concurrency 2: requests completed" in result.stdout
    assert "TTFT median (s)" not in result.stdout        # no 0 median judged as if measured
    assert "0.00 / 0.00" not in result.stdout and "no request completed" in result.stdout
    assert "total_timeout_s" in result.stdout            # why: the level's errors


def test_infinite_burstiness_and_slo_are_standard_json_and_read_back(gateway, tmp_path: Path) -> None:
    saved = tmp_path / "inf.json"
    result = run_cli("bench", "--request-rate", "50", "--burstiness", "inf", "--goodput", "ttft:inf", "-n", "3",
                     "--input-len", "8", "--output-len", "4", "--save", str(saved))
    assert result.exit_code == 0, result.stderr
    data = _standard_json(saved.read_text())
    assert data["levels"][0]["burstiness"] == "inf" and data["goodput_slo"]["ttft_ms"] == "inf"
    assert data["levels"][0]["summary"]["good_requests"] == 3   # every request meets an infinite SLO
    compared = run_cli("bench-compare", str(saved), str(saved), "--json", "--plot", str(tmp_path / "inf.svg"))
    assert compared.exit_code == 0, compared.stderr
    assert _standard_json(compared.stdout)["notes"] == []


@pytest.mark.parametrize("command", [["bench"], ["bench-mix", "a,b"], ["bench-compare", "a.json", "b.json"]])
def test_save_to_dash_is_refused_with_json_named(command: list[str]) -> None:
    result = run_cli(*command, "--save", "-")
    assert result.exit_code == 2 and "--json" in result.stderr, result.stderr
    assert not Path("-").exists()


@pytest.mark.parametrize("args", [["nosuchmodel"], ["a", "--switch", "a,nosuchmodel"]])
def test_an_unknown_model_is_refused_before_any_request(args: list[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.gateways import fake_gateway_config

    # No gateway runs: a refusal that came from a request would say nothing answers.
    monkeypatch.setenv("ANIMLLM_CONFIG", str(fake_gateway_config(tmp_path)))
    result = run_cli("bench", *args, "-n", "1")
    assert result.exit_code == 2, result.stderr
    assert "unknown model 'nosuchmodel'" in result.stderr and "a (alpha); b; v" in result.stderr

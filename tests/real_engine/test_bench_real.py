"""`animllm bench` through the gateway over real vLLM (CPU build) and two tiny models (the
shared engines, both resident): a sweep, --check, and bench-mix of both models sharing the
same gateway, one of them loaded during the mix (the one real load here: `bench --switch`,
which unloads and loads each model in turn, is tested with fake engines in tests/bench)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.test_bench_cli import FIELDS
from tests.support.gateways import RunningGateway
from tests.support.helpers import run_cli

pytestmark = pytest.mark.engine


def test_sweep_and_check(shared_gateway: RunningGateway, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    gw = shared_gateway
    config = tmp_path / "animllm.yaml"  # the shared config, with expectations
    config.write_text(gw.gateway.loaded.files[-1].read_text()
                      + "expectations: {tiny: {ttft_s_max: 30, tokens_per_s_min: 1}}\n")
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    out = tmp_path / "bench.json"
    result = run_cli("bench", "tiny-a", "--concurrency", "1,4", "-n", "8", "--input-len", "32", "--output-len", "16",
                     "--save", str(out), "--check")
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert [level["concurrency"] for level in data["levels"]] == [1, 4]
    for level in data["levels"]:
        summary = level["summary"]
        assert set(summary) == FIELDS and summary["completed"] == 8 and summary["failed"] == 0
        assert summary["output_tokens"] == 8 * 16 and summary["input_tokens"] == 8 * 32  # exact, from usage
        assert summary["ttft_ms"]["median"] > 0 and summary["tpot_ms"]["median"] > 0
    assert all(row["ok"] for row in data["check"])
    print("\n" + result.stdout)

    strict = run_cli("bench", "tiny-b", "-n", "3", "--input-len", "16", "--output-len", "8", "--check",
                     env={"ANIMLLM_EXPECTATIONS__TINY__TOKENS_PER_S_MIN": "1000000"})
    assert strict.exit_code == 1 and "MISSED" in strict.stdout
    mix_of_two(gw, tmp_path)


def mix_of_two(gw, tmp_path: Path) -> None:
    """`bench-mix` over the same gateway, from a known state: tiny-b loaded and tiny-a
    not, so that tiny-a's requests wait for its load (beside tiny-b, which puts the shared
    engines back as they were) while tiny-b's find their model ready; each model's TTFT
    holds the switches into it."""
    import httpx

    assert httpx.post(f"{gw.url}/admin/unload", json={"model": "tiny-a"}, timeout=None).status_code == 200
    assert "tiny-a" not in gw.gateway.pool.models and "tiny-b" in gw.gateway.pool.models
    out = tmp_path / "mix.json"
    result = run_cli("bench-mix", "tiny-a:2,tiny-b:1", "--request-rate", "4", "-n", "12", "--input-len", "16",
                     "--output-len", "8", "--goodput", "ttft:300000", "--samples", "--save", str(out))
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    by_model = {m["model"]: m for m in data["models"]}
    assert set(by_model) == {"tiny-a", "tiny-b"} and data["overall"]["failed"] == 0
    assert sum(m["summary"]["completed"] for m in data["models"]) == 12
    assert all(s["output_tokens"] == 8 for s in data["samples"])           # exact, from the engines' usage
    loads = [s for s in data["switch"]["switches"] if s["to_model"] == "tiny-a"]
    assert len(loads) >= 1 and loads[0]["load_s"] > 1 and by_model["tiny-a"]["behind_switch"] >= 1
    first_a = min((s for s in data["samples"] if s["model"] == "tiny-a"), key=lambda s: s["start"])
    assert first_a["ttft"] >= loads[0]["load_s"]                             # its TTFT holds the load
    for name in by_model:  # tiny-b too, when tiny-a's load evicted it and it came back
        into = [s["load_s"] for s in data["switch"]["switches"] if s["to_model"] == name and s.get("load_s")]
        if into:
            assert max(s["ttft"] for s in data["samples"] if s["model"] == name) >= min(into)
    assert 0 < data["switching_share"] <= 1 and data["overall"]["good_requests"] is None
    assert by_model["tiny-a"]["summary"]["good_requests"] == by_model["tiny-a"]["summary"]["completed"]
    print("\n" + result.stdout + result.stderr)

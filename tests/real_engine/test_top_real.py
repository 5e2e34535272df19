"""`animllm top --once --json` against real vLLM (CPU build) behind the gateway (the shared
engines): tiny-a is listed ready, with its KV cache use and the tokens/s its own counter
shows while streamed requests run."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from tests.support.gateways import RunningGateway, start_bound_s
from tests.support.helpers import run_cli
from tests.support.waiting import wait_until

pytestmark = pytest.mark.engine


def tiny_a(reading: dict) -> dict:
    return next(engine for engine in reading["engines"] if engine["model"] == "tiny-a")


def test_top_once_json_measures_a_real_engine_while_it_streams(shared_gateway: RunningGateway) -> None:
    gw = shared_gateway
    stop = threading.Event()
    streamed: list[int] = []

    def stream_until_stopped() -> None:
        request = {"model": "tiny-a", "max_tokens": 200, "stream": True,
                   "ignore_eos": True, "messages": [{"role": "user", "content": "count"}]}
        with httpx.Client(base_url=gw.url, timeout=start_bound_s(gw.gateway.loaded)) as client:
            while not stop.is_set():
                with client.stream("POST", "/v1/chat/completions", json=request) as answer:
                    streamed.append(sum(1 for line in answer.iter_lines() if line.startswith("data: {")))

    readings: list[dict] = []

    def measured() -> bool:
        """One `top --once`; True once it has the engine's figures. On a loaded machine an
        engine's /metrics can miss the gateway's probe bound (2 s): that reading then has no
        figures (as documented), and the next one is taken, up to the engine's start bound."""
        result = run_cli("top", "--once", "--json", "--interval", "2")
        assert result.exit_code == 0, result.stderr
        readings.append(json.loads(result.stdout))
        engine = tiny_a(readings[-1])
        return engine["kv_cache_usage"] is not None and engine["generation_tokens_per_s"] is not None

    streams = [threading.Thread(target=stream_until_stopped, daemon=True) for _ in range(2)]
    try:
        for thread in streams:
            thread.start()
        wait_until(measured, start_bound_s(gw.gateway.loaded), "top to read the engine's figures")
    finally:
        stop.set()
        for thread in streams:
            thread.join(timeout=start_bound_s(gw.gateway.loaded))
    shot = readings[-1]
    engine = tiny_a(shot)
    print(f"\ntop --once --json on tiny-a, reading {len(readings)}: {engine}")
    assert engine["model"] == "tiny-a" and engine["state"] == "ready"
    assert engine["kv_cache_usage"] is not None and 0 <= engine["kv_cache_usage"] <= 1
    assert engine["generation_tokens_per_s"] is not None and engine["generation_tokens_per_s"] > 0
    assert shot["gateway"]["reachable"] is True and "tiny-a" in {s["to_model"] for s in shot["recent_switches"]}
    assert streamed and all(count > 0 for count in streamed)

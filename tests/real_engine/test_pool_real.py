"""The engine pool over real vLLM (CPU build), on the shared gateway: tiny-a and tiny-b
resident side by side on a fake 16 GiB card on which each engine holds its share (0.45),
so that tiny-c, the third, must evict one. Two loads in all: tiny-c, then tiny-b put back
with `animllm switch`. The least recently used rule itself is shown by the demo
(test_demo.py) and, with fake engines, by tests/gateway."""

from __future__ import annotations

import json

import httpx
import pytest

from animllm_cli.units import GIB
from tests.support.gateways import RunningGateway, start_bound_s, stop_bound_s
from tests.support.helpers import run_cli
from tests.support.shared_engines import MODELS, OTHER, SHARE
from tests.support.waiting import wait_until

pytestmark = pytest.mark.engine


def ask(gw: RunningGateway, model: str) -> str:
    reply = httpx.post(f"{gw.url}/v1/chat/completions", timeout=start_bound_s(gw.gateway.loaded) + 300,
                       json={"model": model, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200, reply.text
    return reply.json()["model"]


def ps() -> dict[str, dict]:
    result = run_cli("ps", "--json")
    assert result.exit_code == 0, result.stderr
    return {e["model"]: e for e in json.loads(result.stdout)["engines"]}


def loads(gw: RunningGateway) -> list[tuple[str | None, list[str]]]:
    return [(s.to_model, s.evicted) for s in gw.gateway.pool.switches]


def test_a_busy_model_is_kept_and_an_idle_one_evicted_for_a_third(shared_gateway: RunningGateway) -> None:
    import openai

    gw = shared_gateway
    switches_before = len(gw.gateway.pool.switches)
    # both resident: each answers without a switch
    assert [ask(gw, m) for m in (*MODELS, *MODELS)] == [*MODELS, *MODELS]
    assert len(gw.gateway.pool.switches) == switches_before
    resident = ps()
    assert set(resident) == set(MODELS)
    assert all(e["state"] == "ready" and e["gpus"] == [0] and e["share"] == SHARE for e in resident.values())
    assert resident["tiny-a"]["vram_bytes"] == int(16 * GIB * SHARE)   # NVML per process, not the plan

    # an in-flight request protects its model: tiny-a is busy, so tiny-c evicts the idle
    # tiny-b; the client is the real openai SDK, streaming through the load (the gateway's
    # waiting comments, one a second here, must not disturb it)
    sdk = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0,
                        timeout=start_bound_s(gw.gateway.loaded) + 300)
    comment_s, gw.gateway.loading_comment_s = gw.gateway.loading_comment_s, 1.0
    keep_alive = gw.gateway.loaded.config.models[OTHER].keep_alive
    try:
        ask(gw, "tiny-b")  # tiny-a is then the least recently used: only its request keeps it
        with gw.one_running("tiny-a"):
            chunks = list(sdk.chat.completions.create(model=OTHER, max_tokens=3, stream=True,
                                                      messages=[{"role": "user", "content": "hi"}]))
        assert {c.model for c in chunks} == {OTHER}
        assert loads(gw)[-1] == (OTHER, ["tiny-b"])
        assert set(ps()) == {"tiny-a", OTHER}
        # the CPU build cannot sleep (vLLM refuses --enable-sleep-mode there): the evicted
        # tiny-b was stopped, and no engine was launched able to sleep or in dev mode
        assert gw.gateway.pool.last_switch.slept == [] and "CPU build" in gw.gateway.pool.support.reason
        for each in gw.gateway.pool.residents.values():
            assert "--enable-sleep-mode" not in each.engine.command.argv
            assert each.engine.command.env["VLLM_SERVER_DEV_MODE"] == "0"

        # keep-alive: tiny-c idle past its keep_alive is unloaded
        gw.gateway.loaded.config.models[OTHER].keep_alive = 1
        wait_until(lambda: OTHER not in ps(), 1 + stop_bound_s(gw.gateway.loaded), "tiny-c's keep-alive unload")
        assert set(ps()) == {"tiny-a"} and loads(gw)[-1] == (None, [OTHER])
        assert gw.gateway.pool.last_switch.reason == "keep_alive"
    finally:
        gw.gateway.loading_comment_s = comment_s
        gw.gateway.loaded.config.models[OTHER].keep_alive = keep_alive
        # tiny-b put back, as the shared engines were found, by `animllm switch`: it fits
        # beside tiny-a, so nothing is evicted
        switched = run_cli("switch", "tiny-b", "--json")
    assert switched.exit_code == 0, switched.stdout + switched.stderr
    report = json.loads(switched.stdout)
    assert report["outcome"] == "ok" and report["to_model"] == "tiny-b" and report["evicted"] == []
    assert report["load_s"] > 0 and report["total_s"] >= report["load_s"]
    print(f"\nswitch to tiny-b beside tiny-a: load {report['load_s']}s, total {report['total_s']}s")

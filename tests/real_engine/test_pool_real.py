"""The engine pool over real vLLM (CPU build) and three tiny models, with a fake NVML that
declares a 16 GiB card on which each engine holds its share: at 0.45 each, two fit and a
third must evict one. One gateway through every step (each engine start costs 20-40 s)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import psutil
import pytest

from animllm_cli.runfile import read_state
from animllm_cli.units import GIB
from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.support.gateways import start_bound_s, start_gateway, stop_bound_s
from tests.support.helpers import run_cli, tiny_config, write
from tests.support.waiting import wait_until

pytestmark = pytest.mark.engine


def ask(gw, model: str) -> str:
    reply = httpx.post(f"{gw.url}/v1/chat/completions", timeout=start_bound_s(gw.gateway.loaded) + 300,
                       json={"model": model, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200, reply.text
    return reply.json()["model"]


def ps() -> dict[str, dict]:
    result = run_cli("ps", "--json")
    assert result.exit_code == 0, result.stderr
    return {e["model"]: e for e in json.loads(result.stdout)["engines"]}


def loads(gw) -> list[tuple[str | None, list[str]]]:
    return [(s.to_model, s.evicted) for s in gw.gateway.pool.switches]


def test_two_tiny_models_stay_resident_and_a_third_evicts_the_least_recently_used(
        three_tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    config = tiny_config(tmp_path / "animllm.yaml", three_tiny_models)
    text = config.read_text()
    for name in three_tiny_models:
        text = text.replace(f"{{source: {three_tiny_models[name]}, ", f"{{source: {three_tiny_models[name]}, share: 0.45, ")
    write(config, text)
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    card = FakeGpu(engine_bytes="share")
    gw = start_gateway(tmp_path, config, model="tiny-a", nvml=FakeNvml([card]), preload=["tiny-b"])
    gw.gateway.loading_comment_s = 1.0
    try:
        # preload: tiny-b loads beside tiny-a
        wait_until(lambda: any(kind == "note" for kind, _ in gw.events), start_bound_s(gw.gateway.loaded),
                   "tiny-b's preload")
        assert [text for kind, text in gw.events if kind == "note"][0].startswith("preload: tiny-b ready")
        assert loads(gw) == [("tiny-a", []), ("tiny-b", [])]

        # both answer without a switch
        assert [ask(gw, m) for m in ("tiny-a", "tiny-b", "tiny-a", "tiny-b")] == ["tiny-a", "tiny-b"] * 2
        assert len(gw.gateway.pool.switches) == 2
        resident = ps()
        assert set(resident) == {"tiny-a", "tiny-b"}
        assert all(e["state"] == "ready" and e["gpus"] == [0] and e["share"] == 0.45 for e in resident.values())
        assert resident["tiny-a"]["vram_bytes"] == int(16 * GIB * 0.45)   # NVML per process, not the plan

        # an in-flight request protects its model: tiny-a is the least recently used but busy,
        # so tiny-c evicts the idle tiny-b; the client is the real openai SDK, streaming through
        # the load (the gateway's waiting comments must not disturb it)
        sdk = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0,
                            timeout=start_bound_s(gw.gateway.loaded) + 300)
        with gw.one_running("tiny-a"):
            chunks = list(sdk.chat.completions.create(model="tiny-c", max_tokens=3, stream=True,
                                                      messages=[{"role": "user", "content": "hi"}]))
        assert {c.model for c in chunks} == {"tiny-c"}
        assert loads(gw)[-1] == ("tiny-c", ["tiny-b"])
        assert set(ps()) == {"tiny-a", "tiny-c"}
        # the CPU build cannot sleep (vLLM refuses --enable-sleep-mode there): the evicted
        # tiny-b was stopped, and no engine was launched able to sleep or in dev mode
        assert gw.gateway.pool.last_switch.slept == [] and "CPU build" in gw.gateway.pool.support.reason
        for resident in gw.gateway.pool.residents.values():
            assert "--enable-sleep-mode" not in resident.engine.command.argv
            assert resident.engine.command.env["VLLM_SERVER_DEV_MODE"] == "0"
        # real vLLM loaded animllm's --middleware: its /tokenize (which vLLM's key leaves
        # open) now wants the engine's key, as every route but /health does
        engine = gw.gateway.pool.engine_for("tiny-a")
        body = {"model": "tiny-a", "prompt": "hi"}
        assert httpx.post(f"{engine.base_url}/tokenize", json=body).status_code == 401
        assert httpx.post(f"{engine.base_url}/tokenize", json=body, headers=engine.headers).status_code == 200
        assert httpx.get(f"{engine.base_url}/health").status_code == 200

        # no request in flight: the least recently used idle one goes (tiny-a: tiny-c is used after it)
        assert ask(gw, "tiny-c") == "tiny-c"
        assert ask(gw, "tiny-b") == "tiny-b"
        assert loads(gw)[-1] == ("tiny-b", ["tiny-a"])

        # keep-alive: tiny-c idle past its keep_alive is unloaded
        gw.gateway.loaded.config.models["tiny-c"].keep_alive = 1
        wait_until(lambda: "tiny-c" not in ps(), 1 + stop_bound_s(gw.gateway.loaded), "tiny-c's keep-alive unload")
        assert set(ps()) == {"tiny-b"} and loads(gw)[-1] == (None, ["tiny-c"])
        assert gw.gateway.pool.last_switch.reason == "keep_alive"
        pids = gw.gateway.pool.all_pids() | {g.pgid for g in read_state().engines}
    finally:
        gw.stop()
    # nothing left after stop
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert read_state() is None

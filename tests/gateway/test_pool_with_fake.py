"""The engine pool through the real gateway, with fake engines and a fake NVML that
declares the card(s): each fake engine holds its --gpu-memory-utilization of the GPUs its
CUDA_VISIBLE_DEVICES names, as a real card would show it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import psutil
import pytest

from animllm_cli.units import GIB
from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.support.gateways import fake_gateway_config, start_bound_s, start_gateway
from tests.support.helpers import run_cli
from tests.support.waiting import wait_until

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
BOUND_S = 30  # the fake config's request_timeout_s: no state change here may take longer
# 16 GiB, 0.4 GiB of desktop; at share 0.4 (6.4 GiB + 0.5 GiB of CUDA graphs planned) two
# engines fit below the 95 % threshold and a third does not.
TWO_FIT = {name: {"share": 0.4} for name in ("a", "b", "v")}


def card(**kwargs) -> FakeGpu:
    return FakeGpu(engine_bytes="share", **kwargs)


@pytest.fixture
def pool_gateway(tmp_path: Path):
    started = []

    def start(*, models: dict | None = None, sections: dict | None = None, gpus: list[FakeGpu] | None = None,
              preload: list[str] | None = None, **config):
        path = fake_gateway_config(tmp_path, models=models or TWO_FIT, sections=sections, **config)
        gw = start_gateway(tmp_path, path, nvml=FakeNvml(gpus or [card()]), preload=preload)
        gw.gateway.keep_alive_interval_s = 0.1
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def ask(client: httpx.Client, model: str) -> dict:
    reply = client.post("/v1/chat/completions", json={"model": model, **CHAT})
    assert reply.status_code == 200, reply.text
    return reply.json()


def loads(gw) -> list[str]:
    """Each model the pool started, in order."""
    return [s.to_model for s in gw.gateway.pool.switches if s.to_model]


def engines(client: httpx.Client) -> dict[str, dict]:
    return {e["model"]: e for e in client.get("/admin/status").json()["engines"]}


def test_two_models_that_fit_stay_loaded_and_a_third_evicts_the_least_recently_used(pool_gateway) -> None:
    gw = pool_gateway()
    with gw.client() as client:
        ask(client, "b")                      # loads beside a: nothing evicted
        assert gw.gateway.pool.last_switch.reason == "beside" and gw.gateway.pool.last_switch.evicted == []
        for model in ("a", "b", "a"):         # both answer without a switch
            assert ask(client, model)["model"] == model
        assert loads(gw) == ["a", "b"]
        resident = engines(client)
        assert set(resident) == {"a", "b"} and all(e["state"] == "ready" for e in resident.values())
        # measured by NVML per process: the share of the card, not the plan's estimate
        wait_until(lambda: all(e["vram_bytes"] for e in engines(client).values()), BOUND_S, "NVML figures for every engine")
        assert engines(client)["a"]["vram_bytes"] == int(16 * GIB * 0.4)
        ask(client, "v")                      # b was used before a: b goes
        report = gw.gateway.pool.last_switch
        assert (report.to_model, report.evicted, report.reason) == ("v", ["b"], "idle")
        assert set(engines(client)) == {"a", "v"}


def test_a_request_in_flight_protects_its_model(pool_gateway) -> None:
    """a is the least recently used but runs a request: the idle b is evicted instead."""
    gw = pool_gateway()
    with gw.client() as client:
        ask(client, "b")
        ask(client, "a")
        ask(client, "b")                      # a is now the least recently used
        with gw.one_running("a"):
            ask(client, "v")
            assert gw.gateway.pool.last_switch.evicted == ["b"]
        assert set(engines(client)) == {"a", "v"}


def test_a_pinned_model_stays_and_the_other_is_evicted(pool_gateway) -> None:
    gw = pool_gateway(models={**TWO_FIT, "a": {"share": 0.4, "pin": True}})
    with gw.client() as client:
        ask(client, "b")
        ask(client, "b")                      # a is least recently used, but pinned
        ask(client, "v")
        assert gw.gateway.pool.last_switch.evicted == ["b"]
        assert engines(client)["a"]["pinned"] is True


def test_a_model_goes_on_the_gpu_with_room_and_sees_only_that_gpu(pool_gateway) -> None:
    """Two 16 GiB cards, models at 0.8: one per card. A model naming gpus: [1] goes there."""
    big = {name: {"share": 0.8} for name in ("a", "b", "v")}
    gw = pool_gateway(models={**big, "v": {"share": 0.8, "gpus": [1]}}, gpus=[card(), card()])
    with gw.client() as client:
        assert engines(client)["a"]["gpus"] == [0]
        ask(client, "b")
        assert engines(client)["b"]["gpus"] == [1] and gw.gateway.pool.last_switch.evicted == []
        assert visible_devices(gw, "b") == "1" and visible_devices(gw, "a") == "0"
        ask(client, "a")
        ask(client, "v")                      # must be GPU 1: b leaves it, a stays on GPU 0
        assert gw.gateway.pool.last_switch.evicted == ["b"]
        assert engines(client)["v"]["gpus"] == [1] and visible_devices(gw, "v") == "1"


def visible_devices(gw, model: str) -> str:
    return psutil.Process(gw.gateway.pool.engine_for(model).pid).environ()["CUDA_VISIBLE_DEVICES"]


def test_keep_alive_unloads_an_idle_model(pool_gateway) -> None:
    gw = pool_gateway(models={**TWO_FIT, "b": {"share": 0.4, "keep_alive": 1}})
    with gw.client() as client:
        ask(client, "b")
        status = engines(client)["b"]
        assert status["keep_alive_s"] == 1 and status["unload_in_s"] is not None
        assert engines(client)["a"]["unload_in_s"] is None  # a: keep_alive -1, forever
        wait_until(lambda: gw.gateway.pool.last_switch.reason == "keep_alive", BOUND_S, "the keep-alive unload")
        report = gw.gateway.pool.last_switch
        assert (report.to_model, report.evicted, report.reason) == (None, ["b"], "keep_alive")
        assert set(engines(client)) == {"a"}


def test_preload_loads_each_model_beside_the_first(pool_gateway) -> None:
    gw = pool_gateway(preload=["b"])
    wait_until(lambda: ("note", "preload: b") in [(k, str(t)[:10]) for k, t in gw.events], BOUND_S, "the preload note")
    with gw.client() as client:
        assert set(engines(client)) == {"a", "b"}
    assert loads(gw) == ["a", "b"]


def test_unload_and_ps_json(pool_gateway, monkeypatch) -> None:
    gw = pool_gateway()
    with gw.client() as client:
        ask(client, "b")
    ps = run_cli("ps", "--json")
    assert ps.exit_code == 0, ps.stderr
    data = json.loads(ps.stdout)
    assert data["schema_version"] == 1 and {e["model"] for e in data["engines"]} == {"a", "b"}
    assert all(set(e) >= {"gpus", "state", "vram_bytes", "in_flight", "waiting", "idle_s", "unload_in_s"}
               for e in data["engines"])
    human = run_cli("ps")
    assert human.exit_code == 0 and "Resident models" in human.stdout and "never" in human.stdout
    unloaded = run_cli("unload", "b", "--json")
    assert unloaded.exit_code == 0, unloaded.stderr
    assert json.loads(unloaded.stdout)["evicted"] == ["b"]
    assert [e["model"] for e in json.loads(run_cli("ps", "--json").stdout)["engines"]] == ["a"]
    again = run_cli("unload", "b")
    assert again.exit_code == 1 and "not loaded" in again.stderr


def test_a_stream_waiting_for_a_load_hears_what_it_waits_for(pool_gateway) -> None:
    """A slow start (each engine takes 2 s): the stream for v says "loading v, evicting ..."
    in SSE comment lines while it waits, then carries the answer; an SSE parser sees only the answer."""
    gw = pool_gateway(models={name: {"share": 0.8} for name in ("a", "b", "v")}, mode="slow", after=2)
    gw.gateway.loading_comment_s = 0.3
    body = {"model": "v", "stream": True, **CHAT}
    with httpx.Client(base_url=gw.url, timeout=start_bound_s(gw.gateway.loaded)) as client:
        reply = client.post("/v1/chat/completions", json=body)
    lines = reply.text.splitlines()
    comments = [line for line in lines if line.startswith(":")]
    assert reply.status_code == 200 and comments, reply.text
    assert comments[0].startswith(": loading v, evicting a") and comments[-1].endswith(" s")
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and lines.index(comments[-1]) < lines.index(data[0])


def test_a_stream_whose_load_fails_ends_with_an_error_event(pool_gateway, tmp_path: Path) -> None:
    gw = pool_gateway(crash_models="org/model-v")
    gw.gateway.loading_comment_s = 0.2
    with httpx.Client(base_url=gw.url, timeout=start_bound_s(gw.gateway.loaded)) as client:
        reply = client.post("/v1/chat/completions", json={"model": "v", "stream": True, **CHAT})
    events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: ")]
    assert reply.status_code == 200 and events and "could not be loaded" in events[-1]["error"]["message"]


def test_chat_shows_what_a_request_waits_for(pool_gateway, monkeypatch) -> None:
    """`chat -p` to a model that must be loaded: the waits go to stderr, the answer to stdout."""
    gw = pool_gateway(models={name: {"share": 0.8} for name in ("a", "b", "v")}, mode="slow", after=2)
    gw.gateway.loading_comment_s = 0.3
    monkeypatch.setenv("ANIMLLM_CONFIG", str(gw.tmp_path / "gateway.yaml"))
    result = run_cli("chat", "b", "-p", "hi", "--max-tokens", "2")
    assert result.exit_code == 0, result.stderr
    assert "loading b, evicting a" in result.stderr and "loading" not in result.stdout


def test_metrics_carry_each_engines_vram_and_their_own_metrics_once_per_family(pool_gateway) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    gw = pool_gateway()
    with gw.client() as client:
        ask(client, "b")
        wait_until(lambda: 'animllm_engine_vram_peak_bytes{model="b"}' in client.get("/metrics").text, BOUND_S,
                   "b's peak in /metrics")
        text = client.get("/metrics").text
    families = [f.name for f in text_string_to_metric_families(text)]
    assert len(families) == len(set(families))
    kv = [line for line in text.splitlines() if line.startswith("vllm:kv_cache_usage_perc{")]
    assert len(kv) == 2 and text.count("# TYPE vllm:kv_cache_usage_perc") == 1
    vram = {tuple(s.labels.values()): s.value for f in text_string_to_metric_families(text)
            if f.name == "animllm_engine_vram_bytes" for s in f.samples}
    assert vram == {("a",): int(16 * GIB * 0.4), ("b",): int(16 * GIB * 0.4)}


def test_a_pool_of_one_engine_evicts_even_where_two_would_fit(pool_gateway) -> None:
    gw = pool_gateway(sections={"pool": {"max_engines": 1}})
    with gw.client() as client:
        ask(client, "b")
        report = gw.gateway.pool.last_switch
        assert (report.evicted, report.reason) == (["a"], "idle") and set(engines(client)) == {"b"}


def test_tensor_parallel_across_two_gpus_and_keep_alive_zero(pool_gateway) -> None:
    """v spans GPUs 0 and 1 (tensor_parallel_size 2, passed to vLLM), beside a on GPU 0;
    v unloads as soon as it is idle (keep_alive 0)."""
    models = {**TWO_FIT, "v": {"share": 0.4, "gpus": [0, 1], "tensor_parallel_size": 2, "keep_alive": 0}}
    gw = pool_gateway(models=models, gpus=[card(), card()])
    with gw.client() as client:
        ask(client, "v")
        placed = gw.gateway.pool.switches[-1]
        assert (placed.to_model, placed.gpus, placed.evicted) == ("v", [0, 1], [])
        wait_until(lambda: gw.gateway.pool.last_switch.reason == "keep_alive", BOUND_S, "the keep-alive unload")
        assert gw.gateway.pool.last_switch.evicted == ["v"] and set(engines(client)) == {"a"}
    from animllm_cli.engine.command import build_engine_command

    argv = build_engine_command(gw.gateway.loaded, gw.gateway.loaded.model("v")).argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"


def test_cuda_visible_devices_names_every_gpu_of_a_tensor_parallel_engine(pool_gateway) -> None:
    models = {**TWO_FIT, "v": {"share": 0.4, "gpus": [0, 1], "tensor_parallel_size": 2}}
    gw = pool_gateway(models=models, gpus=[card(), card()])
    with gw.client() as client:
        ask(client, "v")
        assert visible_devices(gw, "v") == "0,1" and engines(client)["v"]["gpus"] == [0, 1]
        wait_until(lambda: engines(client)["v"]["vram_bytes"] is not None, BOUND_S, "v's NVML figure")
        assert engines(client)["v"]["vram_bytes"] == 2 * int(16 * GIB * 0.4)   # its share of each GPU


def test_a_switch_to_a_model_whose_flag_the_installed_vllm_lacks_fails_naming_it(pool_gateway, monkeypatch) -> None:
    """The pool builds each engine's command for the installed release as serve does: a
    model whose flag that release lacks is never launched; its request gets a 503 naming
    the setting, the release and the first release with it, and the loaded model stays."""
    import sys

    from animllm_cli.engine import python_env

    env = python_env.PythonEnv(sys.executable, packages={"vllm": "0.9.0"})
    monkeypatch.setattr(python_env, "probe_python", lambda executable, extra=None: env)
    gw = pool_gateway(models={"a": {"share": 0.4}, "b": {"share": 0.4, "extra_args": {"enable-log-requests": True}}})
    with httpx.Client(base_url=gw.url, timeout=start_bound_s(gw.gateway.loaded)) as client:
        ask(client, "a")
        reply = client.post("/v1/chat/completions", json={"model": "b", **CHAT})
        assert reply.status_code == 503, reply.text
        message = reply.json()["error"]["message"]
        assert "models.b.extra_args.enable-log-requests: vLLM 0.9.0 has no --enable-log-requests (first in 0.10.1)" \
            in message
        assert list(engines(client)) == ["a"]

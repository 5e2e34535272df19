"""A model a request loads that the Hugging Face cache lacks: the gateway pulls it from the
(fake) hub before anything is evicted and before its engine starts, the download's progress
in the waiting streams' comments, in `status`/`top` and in the log; a failed download fails
the switch with its cause. Explicit loads (`switch`, `serve`) and `serve --no-pull` do not
pull here, nor does a model already in the cache."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from animllm_cli.units import MIB
from tests.fakes.hub import FakeHub
from tests.pull.conftest import no_hf_settings_from_the_shell  # noqa: F401 - autouse: the shell's HF_* variables
from tests.support.gateways import fake_gateway_config, start_bound_s
from tests.support.helpers import run_cli
from tests.support.waiting import wait_until

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
WEIGHTS_BYTES = 4 * MIB
HELD_AT = MIB                 # the fake hub sends this much of the weights, then waits for `release`
CHUNK_BYTES = 64 * 1024       # huggingface_hub writes (and so reports) the file in chunks of this


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """org/model-b (b's source in the fake config) on a fake hub; a, v on none."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", CHUNK_BYTES)  # 10 MiB: one write
    repo = tmp_path / "model-b"
    repo.mkdir()
    (repo / "config.json").write_text('{"model_type": "qwen2"}')
    (repo / "model.safetensors").write_bytes(bytes(range(256)) * (WEIGHTS_BYTES // 256))
    fake = FakeHub()
    fake.add("org/model-b", "main", repo)
    fake.start()
    yield fake
    fake.release.set()
    fake.stop()


@pytest.fixture
def online(tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = fake_gateway_config(tmp_path, env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url,
                                                "HF_HOME": str(tmp_path / "hf")})
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    return config


def cached_weights(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "hf" / "hub" / "models--org--model-b" / "snapshots").rglob("model.safetensors"))


def test_a_stream_hears_the_download_then_gets_its_answer(gateways, online: Path, hub: FakeHub,
                                                          tmp_path: Path) -> None:
    hub.hold_after = HELD_AT
    gw = gateways(online, pull=True)
    gw.gateway.loading_comment_s = 0.1
    logged = []
    gw.gateway.pool.on_progress = logged.append
    body = {"model": "b", "stream": True, **CHAT}
    with httpx.Client(base_url=gw.url, timeout=start_bound_s(gw.gateway.loaded)) as client, \
            client.stream("POST", "/v1/chat/completions", json=body) as reply:
        lines = reply.iter_lines()
        held = next((line for line in lines if line.startswith(": downloading b, 25% of 4.0 MiB")), None)
        hub.release.set()
        rest = list(lines)
    assert held is not None and re.fullmatch(r": downloading b, 25% of 4\.0 MiB\u2026 \d+ s", held), rest
    data = [line for line in rest if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and json.loads(data[0][6:])["choices"]
    assert cached_weights(tmp_path) and gw.gateway.pool.model == "b"
    phases = [p.phase for p in logged if p.model == "b"]
    assert phases[0] == "downloading org/model-b (2 files, 4.0 MiB) into the Hugging Face cache"
    assert any(re.fullmatch(r"downloaded 4\.0 MiB in [\d.]+s", p) for p in phases), phases
    assert any(n.startswith("b: downloaded 4.0 MiB in ") for n in gw.gateway.pool.last_switch.notes)


def test_status_and_top_show_the_download_as_the_switchs_phase(gateways, online: Path, hub: FakeHub) -> None:
    hub.hold_after = HELD_AT
    gw = gateways(online, pull=True)
    waiting = asyncio.run_coroutine_threadsafe(gw.gateway.scheduler.acquire("b"), gw.loop)  # a request's wait
    try:
        with gw.client() as client:
            wait_until(lambda: client.get("/admin/status").json()["engine"]["phase"] == "downloading 25% of 4.0 MiB",
                       start_bound_s(gw.gateway.loaded), "the download's phase in /admin/status")
        status = run_cli("status", "--json")
        assert status.exit_code == 0, status.stderr
        engine = json.loads(status.stdout)["engine"]
        assert (engine["model"], engine["state"], engine["switching_to"]) == ("b", "switching", "b")
        assert "b (switching, downloading 25% of 4.0 MiB)" in run_cli("status").stdout
        top = run_cli("top", "--once", "--interval", "0.1")
        assert "b switching: downloading 25% of 4.0 MiB" in top.stdout, top.stdout
    finally:
        hub.release.set()
    lease = waiting.result(timeout=start_bound_s(gw.gateway.loaded))
    gw.loop.call_soon_threadsafe(lease.release)


def test_a_failed_download_fails_the_switch_with_its_cause_and_evicts_nothing(gateways, online: Path) -> None:
    gw = gateways(online, pull=True)
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json={"model": "v", "stream": True, **CHAT})
        events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: {")]
        switch = client.get("/admin/status").json()["recent_switches"][-1]
    assert events and "error" in events[-1], reply.text
    message = events[-1]["error"]["message"]
    assert message.startswith("model 'v' could not be loaded: pulling v before the start failed: repository "
                              "org/model-v not found at http://127.0.0.1:"), message
    assert (switch["to_model"], switch["outcome"], switch["load_s"]) == ("v", "failed", None)
    assert "org/model-v not found" in switch["error"] and "serve --no-pull" in switch["error"]
    assert gw.gateway.pool.models == ["a"]  # the download came first: a was never evicted


def test_a_model_in_the_cache_is_not_pulled_again(gateways, online: Path, hub: FakeHub) -> None:
    from animllm_cli.config import load_config
    from animllm_cli.pull import ensure_present

    ensure_present(load_config(online), ["b"])
    asked = len(hub.seen)
    gw = gateways(online, pull=True)
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json={"model": "b", **CHAT}).status_code == 200
    assert len(hub.seen) == asked and not gw.gateway.pool.last_switch.notes


@pytest.mark.parametrize("how", ["serve --no-pull", "animllm switch"])
def test_no_pull_and_explicit_loads_leave_the_download_to_the_engine(gateways, online: Path, hub: FakeHub,
                                                                     tmp_path: Path, how: str) -> None:
    """`serve --no-pull` pulls nothing; `switch` (like `serve`) pulled in its own terminal
    first, unless told --no-pull: the gateway does not pull for it."""
    gw = gateways(online, pull=how != "serve --no-pull")
    with gw.client() as client:
        if how == "animllm switch":
            reply = client.post("/admin/switch", json={"model": "b"})
        else:
            reply = client.post("/v1/chat/completions", json={"model": "b", **CHAT})
    assert reply.status_code == 200, reply.text
    assert hub.seen == [] and not cached_weights(tmp_path) and gw.gateway.pool.model == "b"


def test_an_ollama_pull_streams_the_download_in_ollamas_form(gateways, online: Path, hub: FakeHub,
                                                             tmp_path: Path) -> None:
    import ollama

    hub.hold_after = HELD_AT
    gw = gateways(online, pull=True)
    client = ollama.Client(host=gw.url, timeout=start_bound_s(gw.gateway.loaded))
    progress = client.pull("b", stream=True)
    assert next(progress).status == "pulling manifest"
    held = next(p for p in progress if p.status == "pulling model.safetensors" and (p.completed or 0) >= HELD_AT)
    hub.release.set()
    rest = list(progress)
    assert held.total == WEIGHTS_BYTES and held.digest == "model.safetensors"
    assert rest[-1].status == "success" and cached_weights(tmp_path)
    assert any(p.completed == p.total == WEIGHTS_BYTES for p in rest if p.digest == "model.safetensors")
    assert client.pull("b").status == "success"  # not streamed: the last word; present already
    with pytest.raises(ollama.ResponseError) as missing:
        list(client.pull("v", stream=True))
    assert "org/model-v not found" in missing.value.error

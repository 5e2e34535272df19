"""The gateway against fake engines: routing and every 4xx path, streaming relay, crash
mid-stream, slow and failed starts with backoff, timeouts, full queue, admission,
disconnects, security. Real uvicorn, real HTTP, fake vLLM processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.fakes.nvml import GIB, FakeGpu, FakeNvml
from tests.support.gateways import fake_gateway_config, start_gateway
from tests.support.helpers import run_cli
from tests.support.waiting import wait_until

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
BOUND_S = 30  # the fake config's request_timeout_s: no state change here may take longer


@pytest.fixture
def gateway_factory(tmp_path: Path, gateways):
    def make(**kwargs):
        options = {k: kwargs.pop(k) for k in ("key", "host", "nvml", "wait", "model") if k in kwargs}
        return gateways(fake_gateway_config(tmp_path, **kwargs), **options)

    return make


def sse_events(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


def test_routes_by_name_alias_task_and_source(gateway_factory) -> None:
    gw = gateway_factory()
    with gw.client() as client:
        for requested, expected in [("a", "a"), ("alpha", "a"), ("chat", "a"), ("org/model-a", "a"), ("code", "b"),
                                    ("b", "b"), ("ALPHA", "a")]:
            reply = client.post("/v1/chat/completions", json={"model": requested, **CHAT})
            assert reply.status_code == 200, reply.text
            assert reply.json()["model"] == expected, requested
    assert [r["model"] for r in gw.requests_seen()] == ["a", "alpha", "a", "a", "b", "b", "a"]


@pytest.mark.parametrize(("body", "status", "fragment"), [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"messages": []}).encode(), 400, "needs a `model`"),
    (json.dumps({"model": "", "messages": []}).encode(), 400, "needs a `model`"),
    (json.dumps([1, 2]).encode(), 400, "must be a JSON object, not list"),
    (json.dumps({"model": ["a"], "messages": []}).encode(), 400, "needs a `model`"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "nests too deeply"),
    (b'{"model": "a", "n": ' + b"9" * 5000 + b"}", 400, "not valid JSON"),
    (json.dumps({"model": "a", "priority": "high"}).encode(), 400, "priority field must be a number"),
    (json.dumps({"model": "a", "priority": 1e308 * 10}).encode(), 400, "priority field must be a number"),
    (json.dumps({"model": "a", "priority": 1e9}).encode(), 400, "priority field must be a number"),
    (json.dumps({"model": "gpt-4", "messages": []}).encode(), 404, "model 'gpt-4' not found; available: a, b, v, chat, code, vision"),
])
def test_bad_requests_never_touch_the_engine(gateway_factory, body: bytes, status: int, fragment: str) -> None:
    gw = gateway_factory()
    switches = gw.gateway.pool.last_switch
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status
    error = reply.json()["error"]
    assert fragment in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert gw.requests_seen() == [] and gw.gateway.pool.last_switch is switches


def test_models_lists_every_configured_model_marked_loaded(gateway_factory) -> None:
    gw = gateway_factory()
    with gw.client() as client:
        data = client.get("/v1/models").json()["data"]
    assert [(m["id"], m["loaded"]) for m in data] == [("a", True), ("b", False), ("v", False)]


def test_completions_and_embeddings_are_relayed(gateway_factory) -> None:
    gw = gateway_factory()
    with gw.client() as client:
        assert client.post("/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 2}).json()["choices"][0]["text"] == "t0 t1"
        assert client.post("/v1/embeddings", json={"model": "a", "input": "x"}).json()["data"][0]["embedding"] == [0.0, 1.0]


def test_stream_is_relayed_as_it_arrives(gateway_factory) -> None:
    gw = gateway_factory(chunk_delay=0.2)
    arrivals = []
    with gw.client() as client, client.stream("POST", "/v1/chat/completions",
                                              json={"model": "a", "stream": True, **{**CHAT, "max_tokens": 5}}) as reply:
        started = time.monotonic()
        body = ""
        for text in reply.iter_text():
            arrivals.append(time.monotonic() - started)
            body += text
    events = sse_events(body)
    assert events[-1] == "[DONE]" and len(events) == 6
    assert arrivals[0] < 0.5 < arrivals[-1]  # the first chunk came long before the last: not buffered


def test_priority_field_is_taken_out_before_vllm_sees_it(gateway_factory) -> None:
    gw = gateway_factory()
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json={"model": "a", "priority": 5, **CHAT}).status_code == 200
    assert "priority" not in gw.requests_seen()[0]["keys"]


def test_crash_mid_stream_ends_with_an_error_event_and_the_next_request_restarts(gateway_factory) -> None:
    gw = gateway_factory(mode="die-mid-stream", after=2)
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json={"model": "a", "stream": True, **{**CHAT, "max_tokens": 10}})
        events = sse_events(reply.text)
        assert "[DONE]" not in events
        assert "stopped mid-answer" in json.loads(events[-1])["error"]["message"]
        wait_until(lambda: client.get("/admin/status").json()["engine"]["state"] == "dead", BOUND_S,
                   "the gateway to see the engine dead")
        again = client.post("/v1/chat/completions", json={"model": "a", **CHAT})  # non-streamed: no death
        assert again.status_code == 200
        assert client.get("/admin/status").json()["engine"]["state"] == "ready"


def test_a_crash_inside_an_event_never_reaches_the_client_half_written(gateway_factory) -> None:
    """vLLM killed in the middle of writing an event: the client gets whole events and the
    error event, never the half one (an SDK fails on an event it cannot parse before it
    reaches the error). The whole events before it arrive as far as the connection gave
    them up (aiohttp may raise the cut before the bytes it holds)."""
    gw = gateway_factory(mode="die-mid-event", after=2)
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json={"model": "a", "stream": True, **{**CHAT, "max_tokens": 10}})
    events = [json.loads(event) for event in sse_events(reply.text)]  # each one parses
    assert all(e.get("choices") for e in events[:-1]) and len(events) <= 3, events
    assert "stopped mid-answer" in events[-1]["error"]["message"]


def test_slow_start_holds_requests_until_ready(gateway_factory) -> None:
    gw = gateway_factory(mode="slow", after=1.5, wait=False)
    with gw.client() as client:
        started = time.monotonic()
        reply = client.post("/v1/chat/completions", json={"model": "a", **CHAT})
    assert reply.status_code == 200 and time.monotonic() - started > 0.5


def test_failed_start_503s_with_the_diagnosis_then_backs_off(gateway_factory) -> None:
    gw = gateway_factory(mode="kv-oom", wait=False)
    gw.wait_ready()
    assert gw.events[0][0] == "failed"
    gw.gateway.scheduler.backoff_until.clear()  # the first load failed at start; ask again as a client would
    with gw.client() as client:
        first = client.post("/v1/chat/completions", json={"model": "a", **CHAT})
        assert first.status_code == 503
        assert "vLLM estimates the maximum model length is 19104" in first.json()["error"]["message"]
        attempts = gw.gateway.pool.last_switch.finished_at
        second = client.post("/v1/chat/completions", json={"model": "a", **CHAT})
        assert second.status_code == 503 and int(second.headers["retry-after"]) > 0
        assert gw.gateway.pool.last_switch.finished_at == attempts  # no new start inside the backoff


def test_stream_cut_by_the_total_bound_ends_with_an_error_event(gateway_factory) -> None:
    gw = gateway_factory(chunk_delay=0.4, limits={"total_timeout_s": 1})
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json={"model": "a", "stream": True, **{**CHAT, "max_tokens": 20}})
    events = sse_events(reply.text)
    message = json.loads(events[-1])["error"]["message"]
    assert "[DONE]" not in events and "longer than total_timeout_s (1s)" in message
    seen = wait_until(gw.requests_seen, BOUND_S, "the fake engine to log the request")
    assert seen[-1]["gone"] is True  # the upstream was closed: vLLM stops generating


@pytest.mark.parametrize("limits, message", [
    ({"first_byte_timeout_s": 0.5}, "no answer from the engine for 'a' within first_byte_timeout_s (0.5s)"),
    ({"first_byte_timeout_s": 5, "total_timeout_s": 0.5}, "the whole request took longer than total_timeout_s (0.5s)")])
def test_an_answer_slower_than_its_bound_is_a_504_and_the_engine_stops(gateway_factory, limits, message) -> None:
    """A whole (non-streamed) answer is the wait for the first byte: past the bound (or the
    total's end, if sooner) a 504 naming it, and the upstream closed, so vLLM stops."""
    gw = gateway_factory(chunk_delay=0.3, limits=limits)
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json={"model": "a", **{**CHAT, "max_tokens": 20}})
    assert reply.status_code == 504 and message in reply.json()["error"]["message"], reply.text
    seen = wait_until(lambda: [r for r in gw.requests_seen() if r.get("gone")], BOUND_S, "the engine to see it go")
    assert seen[-1]["stream"] is False
    with gw.client() as client:  # the slot was given back; one token comes within the bound
        assert client.post("/v1/chat/completions", json={"model": "a", **{**CHAT, "max_tokens": 1}}).status_code == 200


def test_a_client_that_leaves_before_the_answer_starts_stops_the_engine(gateway_factory) -> None:
    gw = gateway_factory(chunk_delay=0.3, concurrency=1)
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=gw.url, timeout=0.5) as client:
        client.post("/v1/chat/completions", json={"model": "a", **{**CHAT, "max_tokens": 20}})
    seen = wait_until(lambda: [r for r in gw.requests_seen() if r.get("gone")], BOUND_S, "the engine to see it go")
    assert seen[-1]["stream"] is False
    with gw.client() as client:  # its only slot was given back
        assert client.post("/v1/chat/completions", json={"model": "a", **CHAT}).status_code == 200


def test_a_stalled_stream_is_cut_by_the_idle_bound(gateway_factory) -> None:
    gw = gateway_factory(chunk_delay=1.5, limits={"idle_timeout_s": 0.5})
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json={"model": "a", "stream": True, **{**CHAT, "max_tokens": 20}})
    events = sse_events(reply.text)
    assert "[DONE]" not in events
    assert "no output from the engine for 'a' within idle_timeout_s (0.5s)" in json.loads(events[-1])["error"]["message"]


def test_a_slow_flowing_stream_is_not_cut_by_the_request_timeout(gateway_factory) -> None:
    """The seed's request_timeout_s bounds silence, not length: 12 chunks 0.3 s apart
    outlast a 1 s request_timeout_s and still end with [DONE]."""
    gw = gateway_factory(chunk_delay=0.3, limits={"request_timeout_s": 1})
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json={"model": "a", "stream": True, **{**CHAT, "max_tokens": 12}})
    assert sse_events(reply.text)[-1] == "[DONE]"


def test_a_cold_start_longer_than_the_request_timeout_still_answers(gateway_factory) -> None:
    """A request that triggers a load waits within queue_timeout_s (by default the
    engine's start timeout plus request_timeout_s), not request_timeout_s."""
    gw = gateway_factory(mode="slow", after=2.5, limits={"request_timeout_s": 1})
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json={"model": "b", **CHAT})
    assert reply.status_code == 200 and reply.json()["model"] == "b"


def _hold_stream(gw, seconds_per_chunk: float = 0.2, tokens: int = 50):
    """Open a slow stream in a thread, to occupy a slot."""
    def run():
        with httpx.Client(base_url=gw.url, timeout=60) as client, contextlib.suppress(httpx.HTTPError):
            client.post("/v1/chat/completions", json={"model": "a", "stream": True, **{**CHAT, "max_tokens": tokens}})
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: gw.gateway.scheduler.in_flight, BOUND_S, "the slow stream to hold a slot")
    return thread


def test_queue_timeout_is_504(gateway_factory) -> None:
    gw = gateway_factory(concurrency=1, limits={"queue_timeout_s": 1})
    # Hold the only slot from outside (every request is itself bounded by the same timeout).
    lease = asyncio.run_coroutine_threadsafe(gw.gateway.scheduler.acquire("a"), gw.loop).result(5)
    try:
        with gw.client() as client:
            reply = client.post("/v1/chat/completions", json={"model": "a", **CHAT})
        assert reply.status_code == 504
        assert "no slot for 'a' within queue_timeout_s (1s)" in reply.json()["error"]["message"]
        assert gw.gateway.scheduler.depth == 0  # the timed-out request left the queue
    finally:
        gw.loop.call_soon_threadsafe(lease.release)


def _fill_the_queue(gw):
    """One slow stream holds the only slot, one request waits in a queue of one."""
    holder = _hold_stream(gw)

    def wait_in_queue():
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "a", **CHAT}, timeout=60)

    waiting = threading.Thread(target=wait_in_queue, daemon=True)
    waiting.start()
    wait_until(lambda: gw.gateway.scheduler.depth, BOUND_S, "a request to wait in the queue")
    return holder, waiting


def test_full_queue_is_503_with_retry_after(gateway_factory) -> None:
    gw = gateway_factory(chunk_delay=0.2, concurrency=1, queue_max=1)
    _fill_the_queue(gw)
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json={"model": "a", **CHAT})
    assert reply.status_code == 503 and reply.headers["retry-after"] and "queue is full" in reply.json()["error"]["message"]


def test_client_leaving_the_queue(gateway_factory) -> None:
    gw = gateway_factory(chunk_delay=0.2, concurrency=1)
    _hold_stream(gw)
    with socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))) as sock:
        body = json.dumps({"model": "a", **CHAT}).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                     b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_until(lambda: gw.gateway.scheduler.depth, BOUND_S, "the raw request to wait in the queue")
        assert gw.gateway.scheduler.depth == 1
    wait_until(lambda: gw.gateway.scheduler.depth == 0, BOUND_S, "the queue to drop the client that left")


def test_client_leaving_mid_stream_closes_the_upstream(gateway_factory) -> None:
    gw = gateway_factory(chunk_delay=0.1)
    with gw.client() as client, client.stream("POST", "/v1/chat/completions",
                                              json={"model": "a", "stream": True, **{**CHAT, "max_tokens": 100}}) as reply:
        for _ in reply.iter_bytes():
            break
    seen = wait_until(gw.requests_seen, BOUND_S, "the fake engine to log the request")[-1]
    assert seen["gone"] is True and seen["chunks"] < 100
    assert gw.gateway.scheduler.in_flight == 0


def judged_afresh(gw) -> None:
    """Until the admission watcher has judged the card wholly after this call (its verdict
    replaced twice), with the engine's reservation measured."""
    wait_until(lambda: gw.gateway.pool.reserved() is not None, BOUND_S, "the engine's reservation to be measured")
    for _ in range(2):
        before = gw.gateway.verdict
        wait_until(lambda: gw.gateway.verdict is not before, BOUND_S, "the admission watcher's next verdict")


def test_admission_counts_memory_outside_the_engines_reservation(gateway_factory) -> None:
    """The shipped `large` profile (0.90) on a 16 GiB card with a desktop: ~95 % used while
    idle. That is the engine's own reservation, not load: requests are served. Only when
    memory outside it fills the rest are requests for the loaded model refused, and a
    request for another model still switches (the switch frees the large one)."""
    gpu = FakeGpu(used=int(0.8 * GIB), graphics=[(1234, int(0.8 * GIB))], engine_bytes=int(14.4 * GIB))
    gw = gateway_factory(nvml=FakeNvml([gpu]))
    with gw.client() as client:
        judged_afresh(gw)
        reply = client.post("/v1/chat/completions", json={"model": "a", **CHAT})
        assert reply.status_code == 200, reply.text                       # 95 % used, served
        gpu.used = gpu.graphics[0][1] + int(0.75 * GIB)                    # the desktop grows by 0.75 GiB
        wait_until(lambda: gw.gateway.verdict.residents, BOUND_S, "the admission watcher to refuse the residents")
        refused = client.post("/v1/chat/completions", json={"model": "a", **CHAT})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert "memory outside the engines' reservations is 1.55 GiB" in refused.json()["error"]["message"]
        other = client.post("/v1/chat/completions", json={"model": "b", **CHAT})
        assert other.status_code == 200 and other.json()["model"] == "b"   # never refused for the large one


def test_admission_without_per_process_figures_uses_what_the_start_took(gateway_factory) -> None:
    """A driver that lists no process (Docker sees host pids; Windows/WSL report none):
    the engine's reservation is what the start took from free memory, so the same idle
    95 % card still serves its model and never blocks a switch."""
    gpu = FakeGpu(used=int(0.8 * GIB), engine_bytes=int(14.4 * GIB), lists_processes=False)
    gw = gateway_factory(nvml=FakeNvml([gpu]))
    with gw.client() as client:
        judged_afresh(gw)
        assert client.post("/v1/chat/completions", json={"model": "a", **CHAT}).status_code == 200
        assert gw.gateway.verdict.residents is None and gw.gateway.verdict.others is None
        switched = client.post("/v1/chat/completions", json={"model": "b", **CHAT})
        assert switched.status_code == 200 and switched.json()["model"] == "b"


def test_admin_switch_with_a_full_queue_is_503(gateway_factory) -> None:
    gw = gateway_factory(queue_max=1, concurrency=1, chunk_delay=0.2)
    holder, waiting = _fill_the_queue(gw)
    with gw.client() as client:
        reply = client.post("/admin/switch", json={"model": "b"})
    assert reply.status_code == 503 and "queue is full" in reply.json()["error"]["message"]
    assert "retry-after" in reply.headers
    holder.join(timeout=30)
    waiting.join(timeout=30)


def test_admission_refuses_everything_when_other_processes_fill_the_card(gateway_factory) -> None:
    gpu = FakeGpu(used=int(0.4 * GIB))
    gw = gateway_factory(nvml=FakeNvml([gpu]))
    gpu.used = int(15.5 * GIB)                                             # another program took the card
    wait_until(lambda: gw.gateway.verdict.others, BOUND_S, "the admission watcher to refuse other models")
    with gw.client() as client:
        for model in ("a", "b"):
            reply = client.post("/v1/chat/completions", json={"model": model, **CHAT})
            assert reply.status_code == 503 and "other processes hold 97%" in reply.json()["error"]["message"]


def test_admission_refuses_on_a_full_kv_cache(gateway_factory) -> None:
    gw = gateway_factory(kv=0.97)
    wait_until(lambda: gw.gateway.verdict.kv, BOUND_S, "the admission watcher to read the full KV cache")
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json={"model": "a", **CHAT})
    assert reply.status_code == 503 and "KV cache is 97% full" in reply.json()["error"]["message"]


def test_non_local_host_header_is_refused_on_loopback(gateway_factory) -> None:
    gw = gateway_factory()
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json={"model": "a", **CHAT}, headers={"host": "evil.example:8000"}).status_code == 403
        assert client.get("/v1/models", headers={"host": "localhost:1234"}).status_code == 200


def test_api_key_is_required_and_checked(gateway_factory) -> None:
    gw = gateway_factory(key="s3cret-key")
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json={"model": "a", **CHAT}).status_code == 401
        assert client.post("/v1/chat/completions", json={"model": "a", **CHAT},
                           headers={"authorization": "Bearer nope"}).status_code == 401
        assert client.post("/v1/chat/completions", json={"model": "a", **CHAT},
                           headers={"authorization": "Bearer s3cret-key"}).status_code == 200
        assert client.get("/admin/status").status_code == 401  # admin routes need the key whenever one is set
        assert client.get("/admin/status", headers={"authorization": "Bearer s3cret-key"}).status_code == 200


def test_non_loopback_bind_without_a_key_is_refused(monkeypatch) -> None:
    monkeypatch.delenv("ANIMLLM_API_KEY", raising=False)
    result = run_cli("serve", "--host", "0.0.0.0")
    assert result.exit_code == 2 and "refusing to bind 0.0.0.0 without an API key" in result.stderr
    assert "ANIMLLM_API_KEY" in result.stderr


def test_metrics_include_gateway_and_engine_figures(gateway_factory) -> None:
    gw = gateway_factory()
    with gw.client() as client:
        client.post("/v1/chat/completions", json={"model": "a", **CHAT})
        client.post("/v1/chat/completions", json={"model": "nope", **CHAT})
        text = client.get("/metrics").text
    assert 'animllm_requests_total{model="a",outcome="ok"} 1.0' in text
    assert 'animllm_rejections_total{reason="unknown_model"} 1.0' in text
    assert 'animllm_switches_total{chosen_by="explicit",model="a",outcome="ok",reason="cold"} 1.0' in text
    assert "vllm:kv_cache_usage_perc" in text


def test_switch_waits_for_in_flight_and_reports_timings(gateway_factory) -> None:
    gw = gateway_factory(chunk_delay=0.05)
    holder = _hold_stream(gw, tokens=10)
    with gw.client() as client:
        report = client.post("/admin/switch", json={"model": "code"}).json()
    holder.join(timeout=10)
    assert report["from_model"] == "a" and report["to_model"] == "b" and report["outcome"] == "ok"
    assert report["stop_s"] is not None and report["load_s"] > 0
    finished = [r for r in gw.requests_seen() if r.get("stream")]
    assert finished and finished[0]["gone"] is False and finished[0]["chunks"] == 10  # never evicted mid-answer


def test_switch_on_demand_can_be_turned_off(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ANIMLLM_SERVER__SWITCH_ON_DEMAND", "false")
    gw = start_gateway(tmp_path, fake_gateway_config(tmp_path))
    try:
        with gw.client() as client:
            refused = client.post("/v1/chat/completions", json={"model": "b", **CHAT})
            assert refused.status_code == 409 and "switch_on_demand is off" in refused.json()["error"]["message"]
            assert client.post("/v1/chat/completions", json={"model": "a", **CHAT}).status_code == 200
            assert client.post("/admin/switch", json={"model": "b"}).json()["to_model"] == "b"  # explicit switches work
            assert client.post("/v1/chat/completions", json={"model": "b", **CHAT}).status_code == 200
    finally:
        gw.stop()


def _switch_counts(gw) -> dict[str, float]:
    """animllm_switches_total by (model, reason), outcome ok."""
    import re

    counts = {}
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if line.startswith("animllm_switches_total{") and 'outcome="ok"' in line:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            counts[f"{labels['model']}/{labels['reason']}"] = float(line.split()[-1])
    return counts


def test_interleaved_requests_cost_one_switch_and_a_task_never_switches(tmp_path: Path) -> None:
    config = fake_gateway_config(tmp_path, chunk_delay=0.05, concurrency=2,
                                 models={"b": {"tasks": ["code", "chat"]}})  # a and b both chat
    gw = start_gateway(tmp_path, config)
    answers: list[tuple[str, int, str]] = []

    def ask(model: str) -> None:
        with gw.client() as client:
            reply = client.post("/v1/chat/completions", json={"model": model, **CHAT})
            answers.append((model, reply.status_code, reply.json().get("model")))

    def arrived(holder: threading.Thread) -> int:
        """Requests waiting, running or answered, the holder's aside: in this order, each
        one in before the next is sent (one leaving the count early only delays this)."""
        scheduler = gw.gateway.scheduler
        return scheduler.depth + scheduler.in_flight - holder.is_alive() + len(answers)

    try:
        holder = _hold_stream(gw, tokens=40)                 # a is busy for about 2 s
        threads = []
        for model in ["b", "a", "b", "a", "b", "a", "chat"]:  # strict arrival order would switch 6 times
            threads.append(threading.Thread(target=ask, args=(model,)))
            threads[-1].start()
            wait_until(lambda: arrived(holder) >= len(threads), BOUND_S, f"request {len(threads)} to arrive")
        queues = httpx.get(f"{gw.url}/admin/status").json()["queues"]
        for thread in threads:
            thread.join(timeout=60)
        holder.join(timeout=60)
        ask("chat")                                           # b is loaded now and serves chat: no switch
        switches = _switch_counts(gw)
    finally:
        gw.stop()
    assert queues["b"]["waiting"] == 3                          # b waits while a serves its own
    assert all(status == 200 for _, status, _ in answers), answers
    assert [(m, by) for m, _, by in answers if m != "chat"] == [(m, m) for m, _, _ in answers if m != "chat"]
    chat_answers = [by for m, _, by in answers if m == "chat"]
    assert chat_answers == ["a", "b"]                          # the loaded model each time
    assert switches == {"a/cold": 1, "b/idle": 1}

"""What the gateway lets in: browsers' cross-site requests, non-JSON posts, oversized
bodies, admin routes with a key; and a non-streamed request whose client leaves."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.support.gateways import fake_gateway_config, start_gateway
from tests.support.waiting import wait_until

CHAT = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
def gateway(tmp_path: Path):
    running = start_gateway(tmp_path, fake_gateway_config(tmp_path, limits={"max_body_bytes": 4096}))
    yield running
    running.stop()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/admin/stop", "/admin/switch"])
def test_a_web_page_cannot_post_to_the_gateway(gateway, path: str) -> None:
    """A cross-site page can send 'simple' requests (text/plain or a form) with a right
    Host; both the foreign Origin and the non-JSON type are refused, before anything runs."""
    with gateway.client() as client:
        foreign = client.post(path, content=json.dumps(CHAT), headers={"origin": "https://evil.example",
                                                                       "content-type": "application/json"})
        assert foreign.status_code == 403 and "cross-site" in foreign.json()["error"]["message"]
        plain = client.post(path, content=json.dumps(CHAT), headers={"content-type": "text/plain"})
        assert plain.status_code == 415
        form = client.post(path, data={"model": "a"})
        assert form.status_code == 415
        local_page = client.post("/v1/chat/completions", json=CHAT, headers={"origin": "http://localhost:3000"})
        assert local_page.status_code == 200
    assert gateway.thread.is_alive() and gateway.gateway.pool.model == "a"  # not stopped, not switched


def test_an_oversized_body_is_413_before_it_is_read(gateway) -> None:
    with gateway.client() as client:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 10_000}]}
        assert client.post("/v1/chat/completions", json=big).status_code == 413
    # A client that announces a huge body gets its answer without sending it.
    with socket.create_connection(("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 5000000000\r\n\r\n{")
        sock.settimeout(10)
        assert sock.recv(100).startswith(b"HTTP/1.1 413")
    # Chunked uploads have no length: counted as they arrive.
    def chunks():
        for _ in range(10):
            yield b" " * 1000
    with gateway.client() as client:
        assert client.post("/v1/chat/completions", content=chunks(),
                           headers={"content-type": "application/json"}).status_code == 413


def test_a_non_streamed_request_whose_client_leaves_stops_generating(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, fake_gateway_config(tmp_path, chunk_delay=0.2, concurrency=1))
    try:
        port = int(gw.url.rsplit(":", 1)[1])
        body = json.dumps({**CHAT, "max_tokens": 100}).encode()   # 20 s of generation
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            wait_until(lambda: gw.gateway.scheduler.in_flight, 10, "the raw request to take the slot")
        # the client is gone: the slot comes back and the engine stops, long before 20 s
        wait_until(lambda: not gw.gateway.scheduler.in_flight and gw.requests_seen(), 10,
                   "the slot back and the engine's log of the request")
        assert gw.requests_seen()[-1] == {"model": "a", "stream": False, "gone": True}
    finally:
        gw.stop()


def test_the_admission_probe_of_a_hung_engine_is_bounded(tmp_path: Path) -> None:
    """An engine that accepts connections and never answers /metrics: the admission
    watcher's probe gives up within its bound instead of freezing the last verdict."""
    import asyncio
    import socket as sockets
    from types import SimpleNamespace

    from animllm_cli.config import load_config
    from animllm_cli.gateway.app import ENGINE_PROBE_TIMEOUT_S, Gateway
    from animllm_cli.gpu.nvml import GpuReport
    from tests.fakes.nvml import FakeNvml

    listener = sockets.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts (the kernel does), never answers
    engine = SimpleNamespace(base_url=f"http://127.0.0.1:{listener.getsockname()[1]}", pids=set, headers={})
    pool = SimpleNamespace(models=["a"], engine_for=lambda model: engine, reading=lambda: (GpuReport(), set()),
                           residents={}, reserved=dict, fits=lambda *args: True, pinned=lambda model: False, claim=lambda decision: None)
    gateway = Gateway(load_config(fake_gateway_config(tmp_path)), api_key=None, pool=pool,
                      nvml_module=FakeNvml(missing=True))

    async def judge() -> float:
        await gateway.start()
        try:
            started = time.monotonic()
            verdict = await asyncio.wait_for(gateway._judge(), ENGINE_PROBE_TIMEOUT_S + 10)
            assert verdict.summary is None
            return time.monotonic() - started
        finally:
            await gateway.session.close()
            for task in gateway._tasks:
                task.cancel()

    try:
        assert asyncio.run(judge()) < ENGINE_PROBE_TIMEOUT_S + 5
    finally:
        listener.close()

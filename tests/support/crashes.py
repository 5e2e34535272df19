"""Killing a real engine the way a crash would, and asking the gateway for its model at once."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import psutil

SENT_WITHIN_S = 0.05  # the request leaves this soon after the kill: before any watcher could see the death


def asked_right_after_killing(url: str, model: str, pid: int, timeout_s: float,
                              killed_event: threading.Event | None = None) -> httpx.Response:
    """SIGKILL `pid`, and at once a chat request for `model` to the gateway at `url`: its answer.
    `killed_event` is set once the kill is sent (for requests that must come after it)."""
    request = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        sending = client.build_request("POST", "/v1/chat/completions", json=request)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        if killed_event:
            killed_event.set()
        reply = client.send(sending)
        took = time.monotonic() - killed
    # httpx's elapsed runs from sending the request to the end of its answer: the rest is
    # the time from the kill to the send
    sent_after = took - reply.elapsed.total_seconds()
    print(f"\n{model}: sent {sent_after * 1000:.0f} ms after the kill, answered {reply.status_code} {took:.1f} s after it")
    assert sent_after < SENT_WITHIN_S
    return reply


def restarts_in(recent_switches: list[dict], model: str) -> list[dict]:
    """The restarts of `model` among a status's recent switches."""
    return [s for s in recent_switches if s["reason"] == "restart" and s["to_model"] == model]


def engine_core_of(api_server: int) -> int:
    """A real vLLM API server's EngineCore process, found by its name (vLLM names it VLLM::EngineCore)."""
    cores = [p.pid for p in psutil.Process(api_server).children() if "EngineCore" in p.name()]
    assert len(cores) == 1, [(p.pid, p.name()) for p in psutil.Process(api_server).children()]
    return cores[0]

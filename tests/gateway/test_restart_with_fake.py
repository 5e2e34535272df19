"""An engine that dies under the gateway: the requests it had end at once with the crash
named, and their slots are freed; the requests that come after wait for the restart and
are answered; the restart is a switch of its own reason (`restart`) carrying the death's
diagnosis. Real uvicorn, real HTTP, fake vLLM processes. The engine's own watcher is slowed
down (health_interval_s 30), so that what finds each death here is the gateway's check of
a request that failed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.support.gateways import fake_gateway_config, start_bound_s
from tests.support.waiting import wait_until

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
LONG = {**CHAT, "max_tokens": 400}   # 20 s at 0.05 s a token: still being answered when the engine dies
SLOW_WATCHER = {"health_interval_s": 30}
BOUND_S = 30  # the fake config's request_timeout_s (and so its idle bound): nothing here may take longer


@dataclass
class Outcome:
    status: int = 0
    text: str = ""
    ended: float = 0.0   # monotonic


class Requests:
    """Chat requests for model a, each sent from a thread of its own, each one's outcome kept."""

    def __init__(self, url: str, bound_s: float) -> None:
        self.url, self.bound_s = url, bound_s
        self.threads: list[threading.Thread] = []

    def send(self, body: dict, first_chunk: threading.Event | None = None) -> Outcome:
        outcome = Outcome()
        thread = threading.Thread(target=self._run, args=({"model": "a", **body}, outcome, first_chunk), daemon=True)
        thread.start()
        self.threads.append(thread)
        return outcome

    def _run(self, body: dict, outcome: Outcome, first_chunk: threading.Event | None) -> None:
        with httpx.Client(base_url=self.url, timeout=self.bound_s) as client, \
                client.stream("POST", "/v1/chat/completions", json=body) as reply:
            outcome.status = reply.status_code
            for text in reply.iter_text():
                outcome.text += text
                if first_chunk is not None and "data: " in outcome.text:
                    first_chunk.set()
        outcome.ended = time.monotonic()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=self.bound_s)
            assert not thread.is_alive(), "a request got no answer within the gateway's bounds"


def events(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


def refuses(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def the_restarts(client: httpx.Client) -> list[dict]:
    return [s for s in client.get("/admin/status").json()["recent_switches"] if s["reason"] == "restart"]


def metric(client: httpx.Client, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in client.get("/metrics").text.splitlines() if line.startswith(prefix))


@pytest.mark.parametrize("streams", [2, 0], ids=["beside-streams", "non-streamed-only"])
def test_a_crash_ends_what_the_engine_had_at_once_and_what_came_after_waits_for_the_restart(
        gateways, tmp_path: Path, streams: int) -> None:
    """The non-streamed requests it had get their 502 whether or not anything else was
    answered after they were sent (streams whose first chunks came later, say)."""
    gw = gateways(fake_gateway_config(tmp_path, chunk_delay=0.05, concurrency=8, engine=SLOW_WATCHER))
    requests = Requests(gw.url, start_bound_s(gw.gateway.loaded))
    with gw.client() as client:
        engine = client.get("/admin/status").json()["engine"]
        held = [requests.send(LONG) for _ in range(2)]
        wait_until(lambda: metric(client, "vllm:num_requests_running") == 2, BOUND_S,
                   "the engine to run both non-streamed requests (its own metrics, through the gateway's)")
        first_chunks = [threading.Event() for _ in range(streams)]
        streams = [requests.send({**LONG, "stream": True}, first_chunk=seen) for seen in first_chunks]
        wait_until(lambda: all(seen.is_set() for seen in first_chunks), BOUND_S, "both streams' first chunks")
        os.kill(engine["engine_pid"], signal.SIGKILL)
        after = [requests.send({**CHAT, "stream": stream}) for stream in (False, True, False, True)]
        requests.join()

        for outcome in held:
            error = json.loads(outcome.text)["error"]
            assert outcome.status == 502 and "died while answering" in error["message"], outcome
            assert "killed by SIGKILL" in error["message"]
        for outcome in streams:
            assert outcome.status == 200 and "[DONE]" not in events(outcome.text)
            message = json.loads(events(outcome.text)[-1])["error"]["message"]
            assert "stopped mid-answer: it died" in message and "killed by SIGKILL" in message
        # at once: long before the restart that answered the others (never a wait for the idle bound)
        assert max(o.ended for o in held + streams) < min(o.ended for o in after)
        for outcome in after:
            assert outcome.status == 200, outcome
        assert [json.loads(o.text)["model"] for o in after[0::2]] == ["a", "a"]
        assert all(events(o.text)[-1] == "[DONE]" and "error" not in o.text for o in after[1::2])

        wait_until(lambda: client.get("/admin/status").json()["in_flight"] == 0, BOUND_S, "in_flight back to 0")
        assert metric(client, "animllm_in_flight ") == 0
        (restart,) = the_restarts(client)
        assert restart["outcome"] == "ok" and restart["death"]["kind"] == "signal"
        assert restart["death"]["signal"] == "SIGKILL" and restart["death"]["exit_code"] is None
        assert metric(client, 'animllm_switches_total{chosen_by="only",model="a",outcome="ok",reason="restart"}') == 1
        assert metric(client, 'animllm_engine_deaths_total{kind="signal",model="a"}') == 1
        assert client.get("/admin/status").json()["engine"]["engine_pid"] != engine["engine_pid"]


def test_a_request_to_an_engine_killed_while_idle_waits_for_the_restart_rather_than_a_503(
        gateways, tmp_path: Path) -> None:
    """Its port refuses the connection: the request waits for the restart, a stream hearing
    what it waits for, as during any switch."""
    gw = gateways(fake_gateway_config(tmp_path, mode="slow", after=1, engine=SLOW_WATCHER))
    gw.gateway.loading_comment_s = 0.1
    requests = Requests(gw.url, start_bound_s(gw.gateway.loaded))
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json={"model": "a", **CHAT}).status_code == 200
        engine = client.get("/admin/status").json()["engine"]
        os.kill(engine["engine_pid"], signal.SIGKILL)
        port = int(engine["engine_url"].rsplit(":", 1)[1])
        wait_until(lambda: refuses(port), BOUND_S, "the killed engine's port to refuse connections")
        plain, streamed = requests.send(CHAT), requests.send({**CHAT, "stream": True})
        requests.join()
        assert plain.status == 200 and json.loads(plain.text)["model"] == "a", plain
        assert streamed.status == 200 and events(streamed.text)[-1] == "[DONE]", streamed
        assert any(line.startswith(": restarting a") for line in streamed.text.splitlines()), streamed.text
        (restart,) = the_restarts(client)
        assert restart["death"]["signal"] == "SIGKILL" and restart["outcome"] == "ok"
        status = client.get("/admin/status").json()
        assert status["engine"]["state"] == "ready" and status["in_flight"] == 0


def test_an_engine_whose_core_died_answers_500_and_the_request_waits_for_the_restart(
        gateways, tmp_path: Path) -> None:
    """As vLLM after its EngineCore died: its API server still runs, answers completions 500
    and /health 503. The request that got the 500 is answered by the restarted engine."""
    gw = gateways(fake_gateway_config(tmp_path, mode="sick-after-ready", after=3, engine=SLOW_WATCHER))
    with gw.client() as client:
        engine = client.get("/admin/status").json()["engine"]
        wait_until(lambda: httpx.get(f"{engine['engine_url']}/health").status_code == 503, BOUND_S,
                   "the fake engine's core to die")
        reply = client.post("/v1/chat/completions", json={"model": "a", **CHAT})
        assert reply.status_code == 200 and reply.json()["model"] == "a", reply.text
        (restart,) = the_restarts(client)
        assert restart["death"]["kind"] == "unhealthy" and restart["death"]["cause"] == "/health answered 503"
        assert metric(client, 'animllm_engine_deaths_total{kind="unhealthy",model="a"}') == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_request_that_kills_every_engine_it_reaches_waits_for_one_restart_only(
        gateways, tmp_path: Path, stream: bool) -> None:
    """A request that kills the engine answering it (vLLM's 500 once an out-of-memory on its
    prompt took its EngineCore) looks like one that came after the death: it waits for the
    restart, but once. The restarted engine dies of it too, and the request gets the crash
    (a 502, or an error event) instead of killing engine after engine until the restart
    budget is spent; the next request restarts the model within that budget."""
    gw = gateways(fake_gateway_config(tmp_path, engine=SLOW_WATCHER))
    bound_s = start_bound_s(gw.gateway.loaded)
    with gw.client() as client:
        killing = {"model": "a", **CHAT, "stream": stream, "fake_lose_core": True}
        reply = client.post("/v1/chat/completions", json=killing, timeout=bound_s)
        error = json.loads(events(reply.text)[-1] if stream else reply.text)["error"]
        assert reply.status_code == (200 if stream else 502) and error["type"] == "engine_error", reply.text
        assert error["message"] == ("the engine for 'a' died again, after the restart this request waited for: "
                                    "/health answered 503")
        assert len(the_restarts(client)) == 1
        again = client.post("/v1/chat/completions", json={"model": "a", **CHAT}, timeout=bound_s)
        assert again.status_code == 200 and len(the_restarts(client)) == 2, again.text
        assert client.get("/admin/status").json()["in_flight"] == 0


def kill_and_wait_for_the_watcher(client: httpx.Client) -> None:
    """SIGKILL a's engine, then wait until its watcher has found it dead."""
    os.kill(client.get("/admin/status").json()["engine"]["engine_pid"], signal.SIGKILL)
    wait_until(lambda: client.get("/admin/status").json()["engine"]["state"] == "dead", BOUND_S,
               "the watcher to find a's engine dead")


def test_a_dead_engine_stopped_to_load_another_model_leaves_no_restart_behind(gateways, tmp_path: Path) -> None:
    """`switch b` while a's engine is dead stops it for good: a's next load is a load like any
    other, not a restart carrying a death that the switch to b already dealt with."""
    gw = gateways(fake_gateway_config(tmp_path))  # its watcher finds the death
    bound_s = start_bound_s(gw.gateway.loaded)
    with gw.client() as client:
        kill_and_wait_for_the_watcher(client)
        switched = client.post("/admin/switch", json={"model": "b"}, timeout=bound_s).json()
        assert (switched["to_model"], switched["outcome"], switched["reason"]) == ("b", "ok", "cold"), switched
        reply = client.post("/v1/chat/completions", json={"model": "a", **CHAT}, timeout=bound_s)
        assert reply.status_code == 200, reply.text
        last = client.get("/admin/status").json()["recent_switches"][-1]
        assert (last["to_model"], last["reason"], last["death"]) == ("a", "idle", None), last
        assert the_restarts(client) == []


def test_a_dead_engine_stopped_for_a_request_to_another_model_is_still_restarted(gateways, tmp_path: Path) -> None:
    """A request's load of b stops a's dead engine, but requests may be waiting for a's
    restart (they found it dead, and b's request came first): a's next load is the restart,
    carrying how its engine died."""
    gw = gateways(fake_gateway_config(tmp_path))  # its watcher finds the death
    bound_s = start_bound_s(gw.gateway.loaded)
    with gw.client() as client:
        kill_and_wait_for_the_watcher(client)
        for model in ("b", "a"):
            reply = client.post("/v1/chat/completions", json={"model": model, **CHAT}, timeout=bound_s)
            assert reply.status_code == 200 and reply.json()["model"] == model, reply.text
        (restart,) = the_restarts(client)
        assert restart["death"]["signal"] == "SIGKILL" and restart["outcome"] == "ok"
        assert client.get("/admin/status").json()["recent_switches"][-1] == restart


def test_a_restart_beside_another_resident_evicts_nothing(gateways, tmp_path: Path) -> None:
    """Two engines share a card (each holds 0.4 of it, as NVML shows). What the dead one
    held is given back by its stop, which the restart makes first: the restart fits
    where it was, though NVML's last reading still shows the dead engine's share, and the
    other engine stays."""
    config = fake_gateway_config(tmp_path, models={name: {"share": 0.4} for name in ("a", "b", "v")},
                                 engine=SLOW_WATCHER)
    gw = gateways(config, nvml=FakeNvml([FakeGpu(engine_bytes="share")]), preload=["b"])
    with gw.client() as client:
        wait_until(lambda: {e["model"]: e["state"] for e in client.get("/admin/status").json()["engines"]}
                   == {"a": "ready", "b": "ready"}, start_bound_s(gw.gateway.loaded), "a and b both ready")
        before = {e["model"]: e["engine_pid"] for e in client.get("/admin/status").json()["engines"]}
        # NVML is read once more, and then only by the switch: the admission watcher, which reads
        # it every 0.1 s here, is stopped (a longer interval would still let a reading under way end).
        (watcher, *_) = gw.gateway._tasks
        gw.loop.call_soon_threadsafe(watcher.cancel)
        wait_until(watcher.done, BOUND_S, "the admission watcher to stop")
        asyncio.run_coroutine_threadsafe(asyncio.to_thread(gw.gateway.pool.refresh), gw.loop).result(BOUND_S)
        os.kill(before["a"], signal.SIGKILL)
        reply = client.post("/v1/chat/completions", json={"model": "a", **CHAT}, timeout=start_bound_s(gw.gateway.loaded))
        assert reply.status_code == 200, reply.text
        (restart,) = the_restarts(client)
        assert restart["evicted"] == [] and restart["outcome"] == "ok"
        after = {e["model"]: (e["state"], e["engine_pid"]) for e in client.get("/admin/status").json()["engines"]}
        assert after["b"] == ("ready", before["b"]) and after["a"][0] == "ready"

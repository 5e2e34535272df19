"""The gateway over real vLLM (CPU build) and two tiny models: concurrent clients that
alternate models get complete answers from the right model across switches; then the
CLI's serve --detach, status, switch and stop leave no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psutil
import pytest

from animllm_cli.engine import processes
from animllm_cli.config import load_config
from tests.gateway.harness import start_bound_s, start_gateway
from tests.helpers import free_port, tiny_config

pytestmark = pytest.mark.engine


def test_concurrent_clients_alternating_models(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "animllm.yaml", tiny_models)
    gw = start_gateway(tmp_path, config, model="tiny-a")
    results: list[tuple[str, int, str, int]] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        order = ["tiny-a", "tiny-b"] if index % 2 else ["tiny-b", "tiny-a"]
        with httpx.Client(base_url=gw.url, timeout=300) as http:
            for model in order:
                stream = index % 3 == 0
                reply = http.post("/v1/chat/completions", json={
                    "model": model, "stream": stream, "max_tokens": 6, "ignore_eos": True,
                    "messages": [{"role": "user", "content": f"client {index}"}]})
                if stream:
                    events = [line[6:] for line in reply.text.splitlines() if line.startswith("data: ")]
                    assert events[-1] == "[DONE]", reply.text[-300:]
                    chunks = [json.loads(e) for e in events[:-1]]
                    answered_by = {c["model"] for c in chunks}.pop()
                    tokens = sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content") is not None)
                else:
                    body = reply.json()
                    answered_by, tokens = body["model"], body["usage"]["completion_tokens"]
                with lock:
                    results.append((model, reply.status_code, answered_by, tokens))

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()  # each request is bounded by the gateway's own timeouts
        metrics = httpx.get(f"{gw.url}/metrics").text
        engine_pids = gw.gateway.manager.engine.pids()
    finally:
        gw.stop()
    assert len(results) == 12                                         # none lost
    assert all(status == 200 for _, status, _, _ in results), results
    assert all(asked == answered for asked, _, answered, _ in results), results  # never the wrong model
    assert all(tokens >= 1 for *_, tokens in results), results
    switches = sum(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("animllm_switches_total{") and 'outcome="ok"' in line)
    print(f"\n12 requests over 2 models in 6 clients: {switches:.0f} switches")
    assert switches >= 2
    assert processes.living({p: psutil.Process(p) for p in engine_pids if psutil.pid_exists(p)}) == set()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    # `serve --detach` and `switch` wait for a start: bounded by the product, not here.
    bound = start_bound_s(load_config(env["ANIMLLM_CONFIG"])) + 60
    return subprocess.run([sys.executable, "-m", "animllm_cli", *args], capture_output=True, text=True, timeout=bound,
                          env=env)


def test_detached_serve_status_switch_stop(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "animllm.yaml", tiny_models)
    env = {**os.environ, "ANIMLLM_CONFIG": str(config)}
    port = str(free_port())
    started = _cli("serve", "tiny-a", "--port", port, "--detach", env=env)
    assert started.returncode == 0, started.stderr
    assert f"http://127.0.0.1:{port}/v1" in started.stdout
    try:
        again = _cli("serve", "tiny-b", "--port", str(free_port()), env=env)
        assert again.returncode == 1 and "already running" in again.stderr

        status = json.loads(_cli("status", "--json", env=env).stdout)
        assert status["engine"]["model"] == "tiny-a" and status["engine"]["state"] == "ready"
        gateway_pid = status["gateway"]["pid"]

        switched = json.loads(_cli("switch", "tiny-b", "--json", env=env).stdout)
        assert switched["outcome"] == "ok" and switched["from_model"] == "tiny-a" and switched["to_model"] == "tiny-b"
        print(f"\nswitch tiny-a -> tiny-b: stop {switched['stop_s']}s, load {switched['load_s']}s, "
              f"total {switched['total_s']}s")
        engine_pid = json.loads(_cli("status", "--json", env=env).stdout)["engine"]["engine_pid"]
        logs = _cli("logs", "-n", "5", env=env)
        assert logs.returncode == 0 and logs.stdout.strip()
    finally:
        stopped = _cli("stop", "--json", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["engine_processes_left"] == []
    assert not psutil.pid_exists(gateway_pid) or psutil.Process(gateway_pid).status() == psutil.STATUS_ZOMBIE
    assert processes.group_members(engine_pid) == set()
    after = _cli("status", env=env)
    assert after.returncode == 1 and "no gateway is running" in after.stderr

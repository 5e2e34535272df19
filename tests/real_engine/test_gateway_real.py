"""The gateway over real vLLM (CPU build) and two tiny models: concurrent clients of the
openai SDK that alternate models get complete answers from the right model in few
switches; then the CLI's serve --detach, status, switch and stop leave no process behind."""

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
from tests.support.gateways import start_bound_s, start_gateway
from tests.support.helpers import free_port, tiny_config

pytestmark = pytest.mark.engine


def test_interleaved_clients_of_the_openai_sdk_cost_at_most_two_switches(tiny_models: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    """The issue's case: 8 concurrent requests, tiny-a and tiny-b in alternating arrival
    order, from the real `openai` SDK. Strict arrival order cost 7 switches."""
    import openai

    config = tiny_config(tmp_path / "animllm.yaml", tiny_models)
    gw = start_gateway(tmp_path, config, model="tiny-a")
    # Each request is bounded by the gateway's own bounds (a switch, then the answer).
    sdk = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0,
                        timeout=start_bound_s(gw.gateway.loaded) + 300)
    results: list[tuple[str, str, int]] = []
    lock = threading.Lock()

    def client(index: int, model: str) -> None:
        request = {"model": model, "max_tokens": 6, "extra_body": {"ignore_eos": True},
                   "messages": [{"role": "user", "content": f"client {index}"}]}
        if index % 2:  # half of them stream
            chunks = list(sdk.chat.completions.create(stream=True, **request))
            answered_by = {c.model for c in chunks}.pop()
            tokens = sum(1 for c in chunks if c.choices and c.choices[0].delta.content is not None)
        else:
            reply = sdk.chat.completions.create(**request)
            answered_by, tokens = reply.model, reply.usage.completion_tokens
        with lock:
            results.append((model, answered_by, tokens))

    try:
        threads = []
        for index in range(8):
            threads.append(threading.Thread(target=client, args=(index, ("tiny-a", "tiny-b")[index % 2])))
            threads[-1].start()
        for thread in threads:
            thread.join()
        metrics = httpx.get(f"{gw.url}/metrics").text
        engine_pids = gw.gateway.pool.engine.pids()
    finally:
        gw.stop()
    assert len(results) == 8, results                                    # none lost
    assert all(asked == answered for asked, answered, _ in results), results  # never the wrong model
    assert all(tokens >= 1 for *_, tokens in results), results
    switches = sum(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("animllm_switches_total{") and 'outcome="ok"' in line
                   and 'reason="cold"' not in line)                      # the first load is not a switch
    print(f"\n8 interleaved requests over 2 models from the openai SDK: {switches:.0f} switches")
    assert 1 <= switches <= 2
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

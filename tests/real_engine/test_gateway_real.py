"""The gateway over real vLLM (CPU build) and two tiny models, one at a time, run as a user
runs it: `serve --detach` and `status`; then tiny-a's EngineCore is SIGKILLed while idle
(its API server lives on, with a dead engine behind it), and a request sent right after the
kill is answered by the restarted engine, while concurrent clients of the openai SDK that
alternate models arrive during the restart and get complete answers from the right model in
few switches; `status` names the restart and how the engine died; none of the dead engine's
processes is left; `logs`; `stop` leaves no process behind. Three engine starts: tiny-a at
serve, its restart, tiny-b. The API server's own SIGKILL is the soak's, under load."""

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

from animllm_cli.config import load_config
from animllm_cli.engine import processes
from tests.support.crashes import asked_right_after_killing, engine_core_of, restarts_in
from tests.support.gateways import start_bound_s
from tests.support.helpers import free_port, tiny_config

pytestmark = pytest.mark.engine


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    # `serve --detach` waits for a start: bounded by the product, not here.
    bound = start_bound_s(load_config(env["ANIMLLM_CONFIG"])) + 60
    return subprocess.run([sys.executable, "-m", "animllm_cli", *args], capture_output=True, text=True, timeout=bound,
                          env=env)


def interleaved_clients(url: str, timeout_s: float) -> list[tuple[str, str, int]]:
    """8 concurrent requests from the real `openai` SDK, tiny-a and tiny-b in alternating
    arrival order, half of them streamed: (asked, answered by, tokens) for each."""
    import openai

    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=timeout_s)
    results: list[tuple[str, str, int]] = []
    lock = threading.Lock()

    def client(index: int, model: str) -> None:
        request = {"model": model, "max_tokens": 6, "extra_body": {"ignore_eos": True},
                   "messages": [{"role": "user", "content": f"client {index}"}]}
        if index % 2:
            chunks = list(sdk.chat.completions.create(stream=True, **request))
            answered_by = {c.model for c in chunks}.pop()
            tokens = sum(1 for c in chunks if c.choices and c.choices[0].delta.content is not None)
        else:
            reply = sdk.chat.completions.create(**request)
            answered_by, tokens = reply.model, reply.usage.completion_tokens
        with lock:
            results.append((model, answered_by, tokens))

    threads = [threading.Thread(target=client, args=(index, ("tiny-a", "tiny-b")[index % 2])) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def loads_since(switches: list[dict], before: int) -> list[str]:
    """The models loaded by the switches after the first `before` ones (the restart of a
    dead model, a cold load into an empty pool and a switch alike)."""
    return [s["to_model"] for s in switches[before:] if s["outcome"] == "ok" and s["to_model"]]


def test_detached_serve_a_crash_interleaved_clients_and_stop(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "animllm.yaml", tiny_models)
    env = {**os.environ, "ANIMLLM_CONFIG": str(config)}
    port = str(free_port())
    started = _cli("serve", "tiny-a", "--port", port, "--detach", env=env)
    assert started.returncode == 0, started.stderr
    url = f"http://127.0.0.1:{port}"
    assert f"{url}/v1" in started.stdout
    engine_pids: set[int] = set()
    try:
        again = _cli("serve", "tiny-b", "--port", str(free_port()), env=env)
        assert again.returncode == 1 and "already running" in again.stderr

        status = json.loads(_cli("status", "--json", env=env).stdout)
        assert status["engine"]["model"] == "tiny-a" and status["engine"]["state"] == "ready"
        gateway_pid = status["gateway"]["pid"]
        api_server = status["engine"]["engine_pid"]
        engine_pids.add(api_server)
        dead_engine = processes.tree(api_server)
        core = engine_core_of(api_server)

        # The crash while idle: the first request leaves within 50 ms of the SIGKILL, and the
        # issue's 8 interleaved requests arrive during the restart (strict arrival order
        # would cost 7 switches). Which model loads first depends on whether a tiny-b
        # request is queued before the first one has found the engine dead: either way,
        # one load of each.
        timeout_s = start_bound_s(load_config(config)) + 300
        first: list[httpx.Response] = []
        killed = threading.Event()
        asking = threading.Thread(target=lambda: first.append(
            asked_right_after_killing(url, "tiny-a", core, timeout_s, killed)))
        asking.start()
        assert killed.wait(timeout=60), "the kill was not sent"
        results = interleaved_clients(url, timeout_s)
        asking.join()
        assert first and first[0].status_code == 200 and first[0].json()["model"] == "tiny-a", first
        restarted = json.loads(_cli("status", "--json", env=env).stdout)
        loads = loads_since(restarted["recent_switches"], len(status["recent_switches"]))
        print(f"\n8 interleaved requests over 2 models from the openai SDK, after the kill: loads {loads}")
        assert len(results) == 8, results                                         # none lost
        assert all(asked == answered for asked, answered, _ in results), results  # never the wrong model
        assert all(tokens >= 1 for *_, tokens in results), results
        assert sorted(loads) == ["tiny-a", "tiny-b"], restarted["recent_switches"]
        restart, = restarts_in(restarted["recent_switches"], "tiny-a")
        print(f"restart: {restart['total_s']} s; death: {restart['death']}")
        assert restart["outcome"] == "ok" and restart["death"]["kind"] == "process-gone", restart
        # serve's first start made the standby; the restart ran in it (engine/standby.py)
        assert restart["launched_by"] == "standby", restart
        assert any("EngineCore" in gone and f"(pid {core})" in gone for gone in restart["death"]["gone"]), restart
        assert processes.living(dead_engine) == set()  # the API server, its workers: ended with the restart
        engine_pids.add(json.loads(_cli("status", "--json", env=env).stdout)["engine"]["engine_pid"])
        logs = _cli("logs", "-n", "5", env=env)
        assert logs.returncode == 0 and logs.stdout.strip()
    finally:
        stopped = _cli("stop", "--json", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["engine_processes_left"] == []
    assert not psutil.pid_exists(gateway_pid) or psutil.Process(gateway_pid).status() == psutil.STATUS_ZOMBIE
    assert all(processes.group_members(pid) == set() for pid in engine_pids)
    after = _cli("status", env=env)
    assert after.returncode == 1 and "no gateway is running" in after.stderr

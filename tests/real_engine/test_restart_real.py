"""A real engine (vLLM's CPU build, the shared tiny-b) whose EngineCore is killed while idle
(SIGKILL of the API server's child): a request sent right after the kill is answered by the
restarted engine, never refused; `animllm status --json` gives the restart's reason and how
the engine died; none of the dead engine's processes is left. One restart; the engine ends
ready, as the shared gateway was found. The API server's own SIGKILL, while idle, is
test_gateway_real.py's (a detached `animllm serve`), and under load the soak's."""

from __future__ import annotations

import json

import psutil
import pytest

from animllm_cli.engine import processes
from tests.support.crashes import asked_right_after_killing, restarts_in
from tests.support.gateways import RunningGateway, start_bound_s
from tests.support.helpers import run_cli

pytestmark = pytest.mark.engine


def status() -> dict:
    result = run_cli("status", "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def api_server_of(model: str) -> int:
    return next(engine["engine_pid"] for engine in status()["engines"] if engine["model"] == model)


def engine_core_of(api_server: int) -> int:
    """The API server's EngineCore process, found by its name (vLLM names it VLLM::EngineCore)."""
    cores = [p.pid for p in psutil.Process(api_server).children() if "EngineCore" in p.name()]
    assert len(cores) == 1, [(p.pid, p.name()) for p in psutil.Process(api_server).children()]
    return cores[0]


def restart_of(model: str) -> dict:
    """The latest restart of `model`, as `status --json` shows it."""
    restarts = restarts_in(status()["recent_switches"], model)
    assert restarts, status()["recent_switches"]
    return restarts[-1]


def test_a_request_right_after_the_engine_core_is_killed_is_answered_by_the_restart(
        shared_gateway: RunningGateway) -> None:
    api_server = api_server_of("tiny-b")
    core = engine_core_of(api_server)
    dead_engine = processes.tree(api_server)
    reply = asked_right_after_killing(shared_gateway.url, "tiny-b", core, start_bound_s(shared_gateway.gateway.loaded))
    assert reply.status_code == 200 and reply.json()["model"] == "tiny-b", reply.text
    restart = restart_of("tiny-b")
    print(f"restart: {restart['total_s']} s; death: {restart['death']}")
    assert restart["outcome"] == "ok" and restart["death"]["kind"] == "process-gone"
    assert any("EngineCore" in gone and f"(pid {core})" in gone for gone in restart["death"]["gone"]), restart
    assert api_server_of("tiny-b") != api_server
    assert processes.living(dead_engine) == set()  # the API server, its workers: ended with the restart

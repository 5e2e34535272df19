"""`status` and `stop` when the gateway is not what it should be: dead, with engines it
left running (status names them and `animllm stop`); alive but wedged, accepting
connections and answering nothing (stop signals it, SIGTERM then SIGKILL, then ends its
engines as for a dead gateway). Stand-in processes, no real gateway or engine."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from animllm_cli.client import admin as admin_client
from animllm_cli.runfile import EngineGroup, GatewayState, read_dead_state, state_path, write_state
from tests.support.gateways import fake_gateway_config
from tests.support.helpers import run_cli
from tests.support.waiting import wait_until

GRACE_S = 1  # engine.stop_grace_s: the grace after SIGTERM, for the gateway as for its engines

# A gateway whose event loop is stuck: it accepts connections and never answers. With
# "ignore", SIGTERM does not end it either (a wedged loop never acts on it): only SIGKILL.
WEDGED_GATEWAY = """
import signal, socket, sys
if sys.argv[1:] == ["ignore"]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
held = []
while True:
    held.append(server.accept()[0])
"""


@pytest.fixture(autouse=True)
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = fake_gateway_config(tmp_path, engine={"stop_grace_s": GRACE_S})
    monkeypatch.setenv("ANIMLLM_CONFIG", str(path))
    return path


@pytest.fixture
def processes():
    """Start stand-in processes; each is killed at the end, whatever the test did."""
    started: list[subprocess.Popen] = []

    def start(code: str, *args: str, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], **kwargs)
        started.append(proc)
        # Until the child has exec'd, its command line is still pytest's.
        wait_until(lambda: psutil.Process(proc.pid).cmdline()[1:2] == ["-c"], 30, "the stand-in process to run")
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def engine_group(start) -> tuple[subprocess.Popen, EngineGroup]:
    """An engine as a gateway records it: the leader of its own process group, provably ours."""
    engine = start("import time; time.sleep(600)", start_new_session=True)
    return engine, EngineGroup("a", engine.pid, psutil.Process(engine.pid).create_time(), "-c")


def dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


def test_status_names_what_a_dead_gateway_left_and_how_to_end_it(processes) -> None:
    engine, group = engine_group(processes)
    gateway_pid = dead_pid()
    write_state(GatewayState(gateway_pid, "http://127.0.0.1:1", "127.0.0.1", 1, time.time(), None, [], [group]))

    said = run_cli("status")
    assert said.exit_code == 1, said.stderr
    words = " ".join(said.stderr.split())
    assert "no gateway is running" in words
    assert f"a dead gateway (pid {gateway_pid}) left engines running: 'a' (pid {engine.pid})" in words, words
    assert "`animllm stop` ends them" in words

    as_json = run_cli("status", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout) == {"running": False, "dead_gateway_pid": gateway_pid, "leftover_engines": [
        {"model": "a", "process_group": engine.pid, "pids": [engine.pid]}]}

    assert engine.poll() is None and read_dead_state().engines == [group]  # status stops nothing
    assert run_cli("stop").exit_code == 0
    assert engine.wait(10) is not None


def test_status_with_nothing_left_says_no_gateway_runs() -> None:
    said = run_cli("status", "--json")
    assert said.exit_code == 1 and said.stdout == ""
    assert "no gateway is running" in said.stderr and "animllm serve" in said.stderr


@pytest.mark.parametrize("sigterm, ended_by", [("ignore", "SIGKILL"), ("default", "SIGTERM")])
def test_stop_forces_a_wedged_gateway_then_ends_its_engines(processes, monkeypatch: pytest.MonkeyPatch,
                                                            sigterm: str, ended_by: str) -> None:
    monkeypatch.setattr(admin_client, "STOP_ANSWER_S", 0.5)
    engine, group = engine_group(processes)
    gateway = processes(WEDGED_GATEWAY, sigterm, stdout=subprocess.PIPE, text=True)
    port = int(gateway.stdout.readline())
    state = GatewayState(gateway.pid, f"http://127.0.0.1:{port}", "127.0.0.1", port, time.time(), None, [], [group])
    state.cmdline = psutil.Process(gateway.pid).cmdline()
    write_state(state)

    # This test's own bound: a stop that hung would never return, so the gateway is killed
    # after it (the stop then returns, and what it reports fails the test).
    bound_s = admin_client.STOP_ANSWER_S + 3 * GRACE_S + 30
    safety = threading.Timer(bound_s, gateway.kill)
    safety.start()
    started = time.monotonic()
    try:
        result = run_cli("stop", "--json")
    finally:
        safety.cancel()
    assert time.monotonic() - started < bound_s, "stop hung on the wedged gateway"
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["forced"] == ended_by, report
    assert report["gateway_pid"] == gateway.pid and report["leftovers_stopped"] == [group.pgid]
    assert report["engine_processes_left"] == []
    words = " ".join(result.stderr.split())
    assert f"the gateway (pid {gateway.pid}) did not answer its stop request" in words, words
    killed = f"sent SIGTERM; it did not exit within {GRACE_S}s: sent SIGKILL"
    assert (killed in words) == (ended_by == "SIGKILL") and "sent SIGTERM" in words, words
    assert f"stopped the engine for 'a' (process group {group.pgid})" in words, words
    assert gateway.wait(5) == -getattr(signal, ended_by) and engine.wait(5) is not None
    assert not state_path().exists()

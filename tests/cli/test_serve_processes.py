"""`serve` and `stop` as processes die: SIGHUP shuts `serve` down cleanly; what a gateway
killed with SIGKILL left running is found and stopped by the next `stop` or `serve`, and
only if it is provably ours. Fake engines; waits bounded by the config's own numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from animllm_cli.config import load_config
from animllm_cli.engine import processes
from animllm_cli.runfile import EngineGroup, GatewayState, read_dead_state, read_state, state_path, write_state
from tests.support.gateways import fake_gateway_config, start_bound_s, stop_bound_s
from tests.support.helpers import free_port, run_cli
from tests.support.waiting import wait_until



@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = fake_gateway_config(tmp_path, mode="fork-ready", engine={"stop_grace_s": 1})
    monkeypatch.setenv("ANIMLLM_CONFIG", str(path))
    return path


def serve_ready(config: Path, port: int) -> tuple[subprocess.Popen, GatewayState]:
    """A foreground `serve` in a subprocess, once its first model is ready."""
    serve = subprocess.Popen([sys.executable, "-m", "animllm_cli", "serve", "a", "--port", str(port)],
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})

    def ready() -> bool:
        state = read_state()
        try:
            return bool(state and state.pid == serve.pid and state.engines
                        and httpx.get(f"{state.url}/health", timeout=5).json().get("model") == "a")
        except httpx.HTTPError:
            return False

    try:
        wait_until(lambda: serve.poll() is not None or ready(), start_bound_s(load_config(config)),
                   "serve to be ready or to exit")
    except AssertionError:
        serve.kill()
        raise
    assert serve.poll() is None, serve.communicate()[1]
    return serve, read_state()


def kill_gateway_and_watchdog(state: GatewayState) -> EngineGroup:
    """What the OOM killer or a `kill -9` of both leaves: an engine that nothing watches."""
    [group] = state.engines
    os.kill(group.watchdog_pid, signal.SIGKILL)
    os.kill(state.pid, signal.SIGKILL)
    wait_until(lambda: not psutil.pid_exists(state.pid) or psutil.Process(state.pid).status() == psutil.STATUS_ZOMBIE,
               10, "the killed gateway to be gone")
    assert processes.group_members(group.pgid), "the engine should have been left running"
    return group


def test_sighup_shuts_serve_down_cleanly(config: Path) -> None:
    """A closed terminal: the gateway stops its engine and removes its state file, as on
    SIGTERM, instead of dying on the spot."""
    serve, state = serve_ready(config, free_port())
    [group] = state.engines
    serve.send_signal(signal.SIGHUP)
    try:
        _, stderr = serve.communicate(timeout=stop_bound_s(load_config(config)))
    finally:
        serve.kill()
    assert "gateway stopped; engine stopped in" in stderr, stderr
    assert serve.returncode == -signal.SIGHUP
    assert not processes.group_members(group.pgid)
    assert not state_path().exists()


def test_stop_cleans_what_a_killed_gateway_left_then_serve_starts(config: Path) -> None:
    serve, state = serve_ready(config, free_port())
    group = kill_gateway_and_watchdog(state)
    serve.wait()
    assert run_cli("status").exit_code == 1  # no gateway runs...
    assert read_dead_state().engines == [group]  # ...but its record is kept for the cleanup

    stopped = run_cli("stop", "--json")
    assert stopped.exit_code == 0, stopped.stderr
    assert f"stopped the engine for 'a' (process group {group.pgid})" in stopped.stderr
    result = json.loads(stopped.stdout)
    assert result["leftovers_stopped"] == [group.pgid] and result["engine_processes_left"] == []
    assert result["gateway_pid"] == state.pid
    assert not processes.group_members(group.pgid)
    assert not state_path().exists()

    nothing = run_cli("stop")
    assert nothing.exit_code == 1 and "no gateway is running" in nothing.stderr
    port = free_port()
    started = run_cli("serve", "a", "--port", str(port), "--detach")
    assert started.exit_code == 0, started.stderr
    assert run_cli("stop").exit_code == 0


def test_serve_cleans_what_a_killed_gateway_left(config: Path) -> None:
    serve, state = serve_ready(config, free_port())
    group = kill_gateway_and_watchdog(state)
    serve.wait()
    started = run_cli("serve", "a", "--port", str(free_port()), "--detach")
    try:
        assert started.exit_code == 0, started.stderr
        assert f"stopped the engine for 'a' (process group {group.pgid})" in started.stderr
        assert not processes.group_members(group.pgid)
    finally:
        run_cli("stop")


@pytest.mark.parametrize("mismatch", ["created_at", "module"])
def test_a_leftover_record_that_is_not_provably_ours_is_left_alone(tmp_path: Path, mismatch: str) -> None:
    """A pid the kernel reused, or another program in that group: never signalled."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)
    try:
        created_at = psutil.Process(stranger.pid).create_time()
        group = EngineGroup("a", stranger.pid, created_at - 60 if mismatch == "created_at" else created_at,
                            "vllm.entrypoints.openai.api_server" if mismatch == "module" else "-c")
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        write_state(GatewayState(int(dead.stdout), "http://127.0.0.1:1", "127.0.0.1", 1, time.time(), None, [],
                                 [group]))
        result = run_cli("stop")
        assert result.exit_code == 1 and "no gateway is running" in result.stderr
        assert stranger.poll() is None, "a process that is not ours was stopped"
        assert not state_path().exists()
    finally:
        stranger.kill()
        stranger.wait()

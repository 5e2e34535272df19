"""Real vLLM (the CPU build) started with exactly the line `animllm config show --format
args` prints: it serves a chat completion, and stopping it leaves none of its processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import free_port, tiny_config

pytestmark = pytest.mark.engine
START_TIMEOUT_S = 240


def _printed_command(config: Path, model: str, port: int) -> str:
    result = subprocess.run([sys.executable, "-m", "animllm_cli", "--config", str(config), "config", "show", model,
                             "--format", "args", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    return result.stdout.strip()


def _wait_healthy(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vLLM exited with {proc.returncode} during start:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"vLLM not healthy after {START_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _stop_group(pgid: int, grace_s: float = 30) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_members(pgid):
        os.killpg(pgid, signal.SIGKILL)


def test_engine_runs_from_the_printed_command(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    port = free_port()
    config = tiny_config(tmp_path / "animllm.yaml", tiny_models)
    line = _printed_command(config, "tiny-a", port)
    assert f"--port {port}" in line and "--host 127.0.0.1" in line

    log = tmp_path / "engine.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(line, shell=True, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
    pgid = proc.pid  # start_new_session: the shell leads a new process group
    try:
        _wait_healthy(proc, port, log)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(tree) >= 2, "expected the API server and its engine core"

        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
            "model": "tiny-a-alias",  # an alias from the config: served names were passed through
            "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["model"] == "tiny-a"  # vLLM answers with the first served name
        assert body["usage"]["completion_tokens"] >= 1
        assert "CPU KV cache size" in log.read_text()  # VLLM_CPU_KVCACHE_SPACE from the config's env reached it
    finally:
        _stop_group(pgid)
        proc.wait(timeout=30)

    assert _group_members(pgid) == []
    survivors = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], [p.info for p in survivors]

"""Real vLLM (the CPU build) started with exactly the line `animllm config show --format
args` prints: it serves a chat completion, and stopping it leaves none of its processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from animllm_cli.engine import processes
from tests.support.real_engines import running_engine
from tests.support.helpers import free_port, tiny_config

pytestmark = pytest.mark.engine


def printed_command(config: Path, model: str, port: int) -> str:
    result = subprocess.run([sys.executable, "-m", "animllm_cli", "--config", str(config), "config", "show", model,
                             "--format", "args", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    return result.stdout.strip()


def test_engine_runs_from_the_printed_command(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    port = free_port()
    config = tiny_config(tmp_path / "animllm.yaml", tiny_models)
    line = printed_command(config, "tiny-a", port)
    assert f"--port {port}" in line and "--host 127.0.0.1" in line

    log = tmp_path / "engine.log"
    with running_engine(line, port, log) as proc:
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

    assert processes.group_members(proc.pid) == set()
    survivors = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], survivors

"""The line `animllm config show --format args` prints is the one a real vLLM (CPU build)
runs: on the shared gateway, tiny-a's API server runs that command line in that
environment, and serves what it says (an alias of the config among its served names).
What the pool decides per launch is not in the printed line: the share of the card it
placed the engine with (--gpu-memory-utilization) and the key guard for its per-launch key."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from animllm_cli.engine.command import ENGINE_GUARD
from tests.support.gateways import RunningGateway

pytestmark = pytest.mark.engine

KEY_GUARD = ["--middleware", ENGINE_GUARD]  # the gateway's, never in a printed line


def printed_command(config: Path, model: str, port: int) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "animllm_cli", "--config", str(config), "config", "show", model,
                             "--format", "args", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    return shlex.split(result.stdout)


def test_the_printed_line_is_what_the_engine_runs(shared_gateway: RunningGateway) -> None:
    engine = shared_gateway.gateway.pool.engine_for("tiny-a")
    words = printed_command(shared_gateway.gateway.loaded.files[-1], "tiny-a", engine.port)
    python_at = words.index(engine.command.argv[0])   # NAME=value words, then the engine's interpreter
    assignments, argv = words[:python_at], words[python_at:]
    assert argv[argv.index("--port") + 1] == str(engine.port) and argv[argv.index("--host") + 1] == "127.0.0.1"

    share = shared_gateway.gateway.pool.residents["tiny-a"].share.utilization
    at = argv.index("--gpu-memory-utilization") + 1
    running = psutil.Process(engine.pid)
    cmdline = running.cmdline()
    assert float(cmdline[at]) == share
    assert cmdline == [*argv[:at], cmdline[at], *argv[at + 1:], *KEY_GUARD]
    environ = running.environ()
    assert assignments and all(environ.get(name) == value for name, _, value in (a.partition("=") for a in assignments))

    reply = httpx.post(f"{engine.base_url}/v1/chat/completions", timeout=60, headers=engine.headers, json={
        "model": "tiny-a-alias",  # an alias from the config: served names were passed through
        "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "tiny-a"  # vLLM answers with the first served name
    assert body["usage"]["completion_tokens"] >= 1
    assert "CPU KV cache size" in engine.log_path.read_text()  # VLLM_CPU_KVCACHE_SPACE from the config's env reached it

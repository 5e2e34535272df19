"""The line `animllm config show --format args` prints is the one a real vLLM (CPU build)
runs: on the shared gateway, tiny-a's API server runs exactly that command line (the
config's `share:` as --gpu-memory-utilization and the guard of its per-launch key
included) in that environment (the key a "$VLLM_API_KEY" reference to the variable it
reads), and serves what it says (an alias of the config among its served names). What
only the pool decides at launch, the GPU it placed the engine on, is not in the line."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.gateways import RunningGateway
from tests.support.shared_engines import SHARE

pytestmark = pytest.mark.engine


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

    running = psutil.Process(engine.pid)
    assert running.cmdline() == argv
    assert float(argv[argv.index("--gpu-memory-utilization") + 1]) == SHARE
    assert shared_gateway.gateway.pool.residents["tiny-a"].share.utilization == SHARE
    environ = running.environ()
    printed_env = dict(a.split("=", 1) for a in assignments)
    assert printed_env["VLLM_API_KEY"] == "$VLLM_API_KEY"  # a reference to the variable the engine reads
    assert environ["VLLM_API_KEY"] == engine.command.api_key
    assert {name: environ.get(name) for name in printed_env if name != "VLLM_API_KEY"} == \
        {name: value for name, value in printed_env.items() if name != "VLLM_API_KEY"}
    assert "CUDA_VISIBLE_DEVICES" not in printed_env and environ["CUDA_VISIBLE_DEVICES"] == "0"  # the pool's, at launch

    reply = httpx.post(f"{engine.base_url}/v1/chat/completions", timeout=60, headers=engine.headers, json={
        "model": "tiny-a-alias",  # an alias from the config: served names were passed through
        "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "tiny-a"  # vLLM answers with the first served name
    assert body["usage"]["completion_tokens"] >= 1
    assert "CPU KV cache size" in engine.log_path.read_text()  # VLLM_CPU_KVCACHE_SPACE from the config's env reached it

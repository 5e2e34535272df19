"""`config show --format args` prints the line the gateway runs, per-launch additions
included: the key guard (the key as "$VLLM_API_KEY"), sleep mode, the devices of a model
pinned to GPUs, its `share:`. Compared with what a gateway over fake engines launched, on
a box said to have two NVIDIA GPUs and a CUDA build of vLLM (so that engines may sleep).
What only the pool decides at launch is left out of the line, and --explain says so."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import psutil
import pytest

from animllm_cli.engine import python_env
from animllm_cli.engine.python_env import PythonEnv
from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.support.gateways import fake_gateway_config, start_gateway
from tests.support.helpers import run_cli, run_json


@pytest.fixture
def cuda_box(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    """Two GPUs (NVML), and a CUDA build of vLLM in the engine's Python: engines can sleep."""
    nvml = FakeNvml([FakeGpu(engine_bytes="share"), FakeGpu(engine_bytes="share")])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    cuda_vllm = PythonEnv(sys.executable, "3.12.3", {"vllm": "0.10.2", "torch": "2.7.0"})
    monkeypatch.setattr(python_env, "probe_python", lambda executable, extra=None: cuda_vllm)
    return nvml


def test_the_printed_line_is_the_one_the_gateway_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     cuda_box: FakeNvml) -> None:
    config = fake_gateway_config(tmp_path, models={"a": {"share": 0.4, "gpus": [1], "sleep": 1}})
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    gw = start_gateway(tmp_path, config, nvml=cuda_box)
    try:
        engine = gw.gateway.pool.engine_for("a")
        printed = run_cli("config", "show", "a", "--format", "args", "--port", str(engine.port))
        running = psutil.Process(engine.pid).cmdline()
    finally:
        gw.stop()
    assert printed.exit_code == 0, printed.stderr
    assert printed.stdout == engine.command.shell_line() + "\n"      # the same environment and argv...
    words = shlex.split(printed.stdout)
    assert words[len(engine.command.env):] == running                # ...and what the engine process runs
    assert running[running.index("--gpu-memory-utilization") + 1] == "0.4"
    assert running[-3:] == ["--middleware", "animllm_engine_guard.RequireKey", "--enable-sleep-mode"]
    assert {"CUDA_DEVICE_ORDER=PCI_BUS_ID", "CUDA_VISIBLE_DEVICES=1", "VLLM_SERVER_DEV_MODE=1"} <= set(words)
    assert 'VLLM_API_KEY="$VLLM_API_KEY"' in printed.stdout and engine.command.api_key not in printed.stdout
    assert "the gateway makes a new key for each launch" in printed.stderr


@pytest.mark.parametrize("sleep", ["auto", "off"])
def test_what_the_pool_decides_at_launch_is_left_out_and_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   cuda_box: FakeNvml, sleep: str) -> None:
    config = fake_gateway_config(tmp_path, models={"a": {"sleep": sleep}})
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    words = shlex.split(run_cli("config", "show", "a", "--format", "args").stdout)
    assert not [w for w in words if w.startswith(("CUDA_VISIBLE_DEVICES=", "CUDA_DEVICE_ORDER="))]
    assert ("--enable-sleep-mode" in words) == (sleep == "auto")
    assert f"VLLM_SERVER_DEV_MODE={int(sleep == 'auto')}" in words and "--middleware" in words

    rows = {row["key"]: row for row in run_json("config", "show", "a", "--explain", "--format", "json")["values"]}
    for key in ("env.CUDA_VISIBLE_DEVICES", "share"):
        assert rows[key]["value"] is None and rows[key]["source"]["text"].startswith("built-in: the pool's at launch")
    assert rows["env.VLLM_API_KEY"] == {"key": "env.VLLM_API_KEY", "value": "***", "source": {
        "kind": "builtin", "origin": "a random key per launch", "line": None,
        "text": "built-in: a random key per launch"}}
    assert rows["--middleware"]["value"] == "animllm_engine_guard.RequireKey"
    assert f"sleep: {sleep}" in rows["env.VLLM_SERVER_DEV_MODE"]["source"]["text"]


def test_a_share_and_gpus_from_the_config_are_in_the_line_with_their_sources(cuda_box: FakeNvml,
                                                                            isolated_env: Path) -> None:
    (isolated_env / "animllm.yaml").write_text("models: {coder: {share: 0.3, gpus: [0, 1], sleep: 'off'}}\n")
    words = shlex.split(run_cli("config", "show", "coder", "--format", "args").stdout)
    assert words[words.index("--gpu-memory-utilization") + 1] == "0.3"
    assert "CUDA_VISIBLE_DEVICES=0,1" in words and "--enable-sleep-mode" not in words
    rows = {row["key"]: row for row in run_json("config", "show", "coder", "--explain", "--format", "json")["values"]}
    assert rows["gpu_memory_utilization"]["value"] == 0.3
    assert rows["gpu_memory_utilization"]["source"]["text"] == f"{(isolated_env / 'animllm.yaml').resolve()}:1"
    assert rows["env.CUDA_VISIBLE_DEVICES"]["source"] == rows["gpu_memory_utilization"]["source"]
    assert "share" not in rows

"""The supervisor with real vLLM (CPU build) on the tiny models: a shared engine's process
tree, key and log phases; a setting vLLM rejects at start, diagnosed. A SIGKILLed engine is
test_gateway_real.py's (its EngineCore) and the soak's (its API server, and its owner)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psutil
import pytest

from animllm_cli.config import Overrides, load_config
from animllm_cli.engine import phases, processes
from animllm_cli.engine.supervisor import EngineStartError, launch
from tests.support.gateways import RunningGateway
from tests.support.helpers import tiny_config

pytestmark = pytest.mark.engine


def tiny_engine(tiny_models: dict[str, Path], tmp_path: Path, overrides: Overrides):
    loaded = load_config(tiny_config(tmp_path / "animllm.yaml", tiny_models), overrides=overrides)
    return launch(loaded, "tiny-a", log_dir=tmp_path / "logs")


def test_a_supervised_engine_runs_its_tree_and_wants_its_key(shared_gateway: RunningGateway) -> None:
    """On a shared engine (started by the supervisor under the pool): its processes, an
    answer, the per-launch key, animllm's middleware, the phases its real log passed
    through. That its stop leaves nothing is checked when the shared gateway stops."""
    engine = shared_gateway.gateway.pool.engine_for("tiny-a")
    names = {p.name() for p in map(psutil.Process, engine.pids())}
    assert any("EngineCore" in n for n in names), names
    reply = httpx.post(f"{engine.base_url}/v1/chat/completions", timeout=60, headers=engine.headers, json={
        "model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
    assert httpx.get(f"{engine.base_url}/v1/models", timeout=30).status_code == 401  # the key reached vLLM
    # animllm's --middleware: /tokenize (which vLLM's own key leaves open) wants the key too
    body = {"model": "tiny-a", "prompt": "hi"}
    assert httpx.post(f"{engine.base_url}/tokenize", json=body, timeout=30).status_code == 401
    assert httpx.post(f"{engine.base_url}/tokenize", json=body, headers=engine.headers, timeout=30).status_code == 200
    assert httpx.get(f"{engine.base_url}/health", timeout=30).status_code == 200
    passed, phase = [], "starting"
    for line in engine.log_path.read_text(errors="replace").splitlines():
        if (phase := phases.advance(phase, line)) not in passed:
            passed.append(phase)
    assert {"loading weights", "starting server"} <= set(passed), passed


def test_a_setting_vllm_rejects_is_diagnosed_not_timed_out(tiny_models, tmp_path: Path) -> None:
    too_long = Overrides(settings={"max_model_len": (100000, "--max-model-len 100000")})
    engine = tiny_engine(tiny_models, tmp_path, overrides=too_long)
    started = time.monotonic()
    with pytest.raises(EngineStartError) as info:
        engine.start()
    print(f"\nrejected in {time.monotonic() - started:.1f}s: {info.value.reason}")
    assert info.value.kind == "unsupported-setting", info.value.message
    assert "max_model_len" in info.value.reason or "100000" in info.value.reason
    assert info.value.log_tail
    assert processes.group_members(engine.pid) == set()

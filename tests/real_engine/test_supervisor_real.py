"""The supervisor with real vLLM (CPU build) on the tiny models: start, chat, stop with
nothing left; the API server SIGKILLed under it; a setting vLLM rejects at start."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from animllm_cli.config import Overrides, load_config
from animllm_cli.engine import processes
from animllm_cli.engine.supervisor import EngineStartError, State, launch
from tests.support.helpers import tiny_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.engine


def tiny_engine(tiny_models: dict[str, Path], tmp_path: Path, overrides: Overrides | None = None, **kwargs):
    loaded = load_config(tiny_config(tmp_path / "animllm.yaml", tiny_models), overrides=overrides)
    return launch(loaded, "tiny-a", log_dir=tmp_path / "logs", **kwargs)


def test_start_chat_stop_leaves_no_process(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    phases = []
    engine = tiny_engine(tiny_models, tmp_path, on_progress=lambda p: phases.append(p.phase))
    report = engine.start()
    try:
        names = {p.name() for p in map(psutil.Process, engine.pids())}
        assert any("EngineCore" in n for n in names), names
        reply = httpx.post(f"{engine.base_url}/v1/chat/completions", timeout=60, headers=engine.headers, json={
            "model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
        no_key = httpx.get(f"{engine.base_url}/v1/models", timeout=30)
        assert no_key.status_code == 401  # the per-launch key reached real vLLM through its environment
        known = dict(engine._known)
    finally:
        stop = engine.stop()
    print(f"\ntiny-a: start-to-ready {report.ready_s:.1f}s, phases {report.phases}; "
          f"stop {stop.stop_s:.2f}s (forced={stop.forced}), VRAM: {stop.vram_note}")
    assert stop.left == [] and not stop.forced
    assert processes.group_members(engine.pid) == set()          # by process group
    assert processes.living(known) == set()                      # by process tree
    assert {"loading weights", "starting server"} <= {name for name, _ in report.phases}


def test_sigkill_of_the_api_server_is_noticed_and_stop_removes_the_orphans(tiny_models, tmp_path: Path) -> None:
    deaths: list[str] = []
    engine = tiny_engine(tiny_models, tmp_path, on_dead=lambda e, reason: deaths.append(reason))
    engine.start()
    engine.settings = engine.settings.model_copy(update={"health_interval_s": 0.5})
    others = engine.pids() - {engine.pid}
    assert others, "expected EngineCore and workers beside the API server"
    os.kill(engine.pid, signal.SIGKILL)
    wait_until(lambda: engine.state is State.DEAD, 30, "the supervisor to see its engine dead")
    assert deaths and "exited with code -9" in deaths[0]
    stop = engine.stop()
    assert stop.left == []
    assert processes.group_members(engine.pid) == set()
    assert processes.living({pid: psutil.Process(pid) for pid in others if psutil.pid_exists(pid)}) == set()


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

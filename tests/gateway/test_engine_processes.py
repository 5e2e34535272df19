"""The gateway's engine processes: a closing gateway starts nothing and stops an engine
that is still starting; the state file names the engine groups it runs; a hung engine
declared dead drops its streams at once. Fake engines; waits bounded by the config."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import psutil
import pytest

from animllm_cli.config import load_config
from animllm_cli.engine import processes
from animllm_cli.engine.supervisor import EngineStartError
from animllm_cli.gateway.pool import EnginePool, PoolClosing
from animllm_cli.gateway.scheduler import Decision
from animllm_cli.runfile import read_state
from tests.fakes.nvml import FakeNvml
from tests.support.gateways import fake_gateway_config, start_gateway
from tests.support.waiting import wait_until

KILL_WAIT_S = 5.0  # what the product waits after SIGKILL


def pool_for(tmp_path: Path, mode: str, **engine: object) -> EnginePool:
    loaded = load_config(fake_gateway_config(tmp_path, mode=mode, after=60, engine=engine or None))
    return EnginePool(loaded, log_dir=tmp_path / "logs", nvml_module=FakeNvml(missing=True))


def load(model: str, *evict: str) -> Decision:
    return Decision(model, "admin", "explicit", evict)


def test_shutdown_during_a_switch_launches_nothing(tmp_path: Path) -> None:
    """The switch is stopping the old engine (SIGTERM ignored: it takes the grace period)
    when shutdown begins: the new engine is never launched."""
    pool = pool_for(tmp_path, "ignore-term", stop_grace_s=1)

    async def scenario() -> None:
        await pool.switch(load("a"))
        switching = asyncio.create_task(pool.switch(load("b", "a")))
        await asyncio.sleep(0)  # the switch is now stopping 'a' in a thread
        await pool.shutdown()
        with pytest.raises(PoolClosing):
            await switching

    try:
        asyncio.run(scenario())
    finally:
        if pool.engine is not None:
            pool.engine.stop()
    assert pool.engine is None and pool.engine_groups() == []
    assert not (tmp_path / "logs" / "b.log").exists(), "the closing gateway launched 'b'"


def test_shutdown_stops_an_engine_that_is_still_starting(tmp_path: Path) -> None:
    pool = pool_for(tmp_path, "slow", stall_timeout_s=120, start_timeout_s=120)
    started: list[float] = []

    async def scenario() -> EngineStartError:
        loading = asyncio.create_task(pool.switch(load("a")))
        await asyncio.to_thread(wait_until, pool.engine_groups, pool.loaded.config.engine.start_timeout_s,
                                "the slow engine to be launched")  # its process exists
        engine = pool.engine
        started.append(time.monotonic())
        await pool.shutdown()
        with pytest.raises(EngineStartError) as info:
            await loading
        assert not processes.group_members(engine.pid)
        return info.value

    error = asyncio.run(scenario())
    assert error.kind == "stopped"
    assert time.monotonic() - started[0] < pool.loaded.config.engine.stop_grace_s + KILL_WAIT_S + 2
    assert pool.engine_groups() == []


def test_the_state_file_names_the_running_engine_group(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, fake_gateway_config(tmp_path))
    try:
        engine = gw.gateway.pool.engine
        [group] = read_state().engines
        assert (group.model, group.pgid, group.module) == ("a", engine.pid, "tests.fakes.fake_vllm")
        assert group.created_at == psutil.Process(engine.pid).create_time()
        assert group.watchdog_pid == engine.watchdog_pid
        with gw.client() as client:
            assert client.post("/admin/switch", json={"model": "b"}).status_code == 200
        [group] = read_state().engines
        assert (group.model, group.pgid) == ("b", gw.gateway.pool.engine.pid)
    finally:
        gw.stop()
    assert read_state() is None


def test_a_stream_from_a_hung_engine_ends_once_the_engine_is_declared_dead(tmp_path: Path) -> None:
    """The engine hangs mid-stream (no chunk, no /health, SIGTERM unhandled). Without the
    stop at death the stream would hang until the request's own timeouts."""
    config = fake_gateway_config(tmp_path, mode="hang-after-ready", after=1.5, chunk_delay=0.1)
    gw = start_gateway(tmp_path, config)
    engine = gw.gateway.loaded.config.engine
    probe_s = engine.health_interval_s + min(5.0, engine.health_interval_s * 2)
    bound_s = 1.5 + engine.health_failures * probe_s + engine.stop_grace_s + KILL_WAIT_S + 5
    body = {"model": "a", "stream": True, "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}]}
    try:
        with httpx.Client(base_url=gw.url, timeout=bound_s) as client:
            started = time.monotonic()
            reply = client.post("/v1/chat/completions", json=body)
            elapsed = time.monotonic() - started
        events = [line[len("data: "):] for line in reply.text.splitlines() if line.startswith("data: ")]
        assert "[DONE]" not in events
        assert "error" in json.loads(events[-1]), events[-1]
        assert elapsed < bound_s
    finally:
        gw.stop()

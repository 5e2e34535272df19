"""The supervisor against a fake vLLM that crashes, prints known failure lines, stalls,
ignores SIGTERM, leaves a grandchild holding its output, or dies after it was ready.
Each case ends in the right error, and nothing is left running."""

from __future__ import annotations

import _thread
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from animllm_cli.config import load_config
from animllm_cli.engine import processes
from animllm_cli.engine.supervisor import EngineStartError, State, launch
from animllm_cli.errors import AnimllmError
from tests.fakes.nvml import GIB, FakeGpu, FakeNvml
from tests.support.fake_engines import FAST, assert_nothing_left, fake_config, fake_engine
from tests.support.helpers import REPO_ROOT, write
from tests.support.waiting import wait_until

DEATH_BOUND_S = 10  # FAST's health checks notice a death within a second
def test_start_ready_and_stop(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "fork-ready")
    seen = []
    engine.on_progress = seen.append
    report = engine.start()
    assert engine.state is State.READY
    assert httpx.get(f"{engine.base_url}/health").status_code == 200
    assert [name for name, _ in report.phases][-1] == "ready"
    assert "loading weights" in [name for name, _ in report.phases]
    assert seen and seen[0].model == "fake"
    assert len(engine.pids()) == 2  # the server and its worker
    stop = engine.stop()
    assert stop.left == [] and not stop.forced
    assert stop.vram_release_s is None and stop.vram_note.startswith("no GPU")
    assert engine.state is State.STOPPED
    assert_nothing_left(engine)
    assert engine.stop().vram_note == "not running"  # idempotent


def test_crash_during_start_is_reported_at_once_with_the_tail(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "crash")
    with pytest.raises(EngineStartError) as info:
        engine.start()
    error = info.value
    assert error.kind == "exited"  # not a stall or a timeout
    assert "exited with code 1" in error.message
    assert any("weights are corrupt" in line for line in error.log_tail)
    assert str(engine.log_path) in error.message
    assert_nothing_left(engine)


def test_known_kv_cache_line_is_diagnosed(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "kv-oom")
    with pytest.raises(EngineStartError) as info:
        engine.start()
    assert info.value.kind == "kv-cache"
    assert "vLLM estimates the maximum model length is 19104" in info.value.reason
    assert info.value.fix == "set max_model_len: 19104"


def test_free_memory_line_names_the_processes_holding_the_gpu(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(used=5 * GIB, compute=[(os.getpid(), 5 * GIB)])])
    engine = fake_engine(tmp_path, "free-memory", nvml=nvml)
    with pytest.raises(EngineStartError) as info:
        engine.start()
    assert info.value.kind == "free-memory"
    assert "(10.5/15.92 GiB)" in info.value.reason and "utilization 0.9" in info.value.reason
    assert f"pid {os.getpid()}, 5120 MiB" in info.value.fix


def test_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(EngineStartError) as info:
        fake_engine(tmp_path, "not-found").start()
    assert info.value.kind == "model-not-found" and "'fake'" in info.value.reason


def test_stall_is_killed_after_the_stall_timeout(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "stall", stall_timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises(EngineStartError) as info:
        engine.start()
    assert info.value.kind == "stalled" and "phase 'loading weights'" in info.value.reason
    assert time.monotonic() - started < FAST["start_timeout_s"]
    assert_nothing_left(engine)


def test_overall_start_timeout(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "slow", after=60, start_timeout_s=1.5, stall_timeout_s=30)
    with pytest.raises(EngineStartError) as info:
        engine.start()
    assert info.value.kind == "timeout"
    assert_nothing_left(engine)


def test_sigterm_ignored_means_sigkill_after_the_grace(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "ignore-term", stop_grace_s=1)
    engine.start()
    stop = engine.stop()
    assert stop.forced and stop.left == []
    assert stop.stop_s >= 1
    assert_nothing_left(engine)


def test_grandchild_holding_the_pipe_neither_hides_the_crash_nor_survives(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "grandchild")
    with pytest.raises(EngineStartError) as info:
        engine.start()
    assert info.value.kind == "exited" and any("lost the grandchild" in line for line in info.value.log_tail)
    assert_nothing_left(engine)


@pytest.mark.parametrize("mode, after, death", [
    ("die-after-ready", 0.5, "the engine process exited with code 3"),
    ("sick-after-ready", 0.3, "/health failed 3 times in a row"),
], ids=["exit", "failing-health"])
def test_a_death_after_ready_marks_the_engine_dead(tmp_path: Path, mode: str, after: float, death: str) -> None:
    engine = fake_engine(tmp_path, mode, after=after)
    engine.start()
    wait_until(lambda: engine.state is State.DEAD, DEATH_BOUND_S, "the engine to be seen dead")
    assert engine.deaths == [death]
    assert engine.stop().left == []
    assert_nothing_left(engine)


def test_ctrl_c_during_start_tears_the_child_down(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "slow", after=60, stall_timeout_s=60)
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        engine.start()
    timer.cancel()
    assert engine.state is State.STOPPED
    assert_nothing_left(engine)


def test_vram_release_is_waited_for_on_a_gpu(tmp_path: Path) -> None:
    class SlowDriver(FakeNvml):
        """Lists the engine's memory for 5 more looks after it is gone: by looks, not by
        the clock, so a loaded machine cannot let go before the supervisor waits."""
        looks = 0

        def nvmlDeviceGetComputeRunningProcesses(self, gpu):
            if gpu.compute and not psutil.pid_exists(engine.pid):
                self.looks += 1
                if self.looks > 5:
                    gpu.compute = []
            return super().nvmlDeviceGetComputeRunningProcesses(gpu)

    nvml = SlowDriver([FakeGpu()])
    engine = fake_engine(tmp_path, "ok", nvml=nvml)
    engine.start()
    nvml.gpus[0].compute = [(engine.pid, 4 * GIB)]
    stop = engine.stop()
    assert stop.vram_note == "released" and nvml.looks == 6
    assert stop.vram_release_s >= 0.4  # five looks 0.1 s apart: the supervisor waited for the driver


def test_log_file_is_bounded(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "crash", log_max_bytes=120)
    with pytest.raises(EngineStartError):
        engine.start()
    rotated = engine.log_path.with_name(engine.log_path.name + ".1")
    assert rotated.exists()
    assert engine.log_path.stat().st_size <= 400 and rotated.stat().st_size <= 400


def test_missing_engine_interpreter(tmp_path: Path) -> None:
    config = fake_config(tmp_path, "ok")
    config.write_text(config.read_text().replace('"module"', '"python": "/nonexistent/python", "module"'))
    engine = launch(load_config(config), "fake", log_dir=tmp_path)
    with pytest.raises(AnimllmError) as info:
        engine.start()
    assert "cannot run the engine interpreter /nonexistent/python" in info.value.message


OWNER = """
import sys
from animllm_cli.config import load_config
from animllm_cli.engine.supervisor import launch
engine = launch(load_config(sys.argv[1]), "fake", log_dir=__import__("pathlib").Path(sys.argv[2]))
engine.start()
print(engine.pid, flush=True)
if sys.argv[3] == "raise":
    raise RuntimeError("the owner crashed")
"""


@pytest.mark.parametrize("how", ["exit", "raise"])
def test_nothing_left_when_the_owner_exits(tmp_path: Path, how: str) -> None:
    config = fake_config(tmp_path, "fork-ready")
    result = subprocess.run([sys.executable, "-c", OWNER, str(config), str(tmp_path), how], capture_output=True,
                            text=True, timeout=60, cwd=REPO_ROOT)
    assert result.returncode == (0 if how == "exit" else 1), result.stderr
    pgid = int(result.stdout.split()[0])
    assert processes.group_members(pgid) == set()


def test_each_launch_has_its_own_key_in_the_environment_never_in_argv(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ANIMLLM_API_KEY", "the-gateways-own-key")
    first, second = fake_engine(tmp_path, "ok"), fake_engine(tmp_path, "ok")
    first.start()
    try:
        key = first.command.api_key
        assert key and key != second.command.api_key
        process = psutil.Process(first.pid)
        assert key not in " ".join(process.cmdline())                    # not in a `ps` listing
        assert process.environ().get("VLLM_API_KEY") == key
        assert "ANIMLLM_API_KEY" not in process.environ()                # the gateway's key stays with it
        assert httpx.get(f"{first.base_url}/v1/models").status_code == 401
        assert httpx.get(f"{first.base_url}/v1/models", headers=first.headers).status_code == 200
    finally:
        first.stop()
    assert_nothing_left(first)


def test_an_engine_that_does_not_check_its_key_is_never_called_ready(tmp_path: Path) -> None:
    """Whatever answers on the port must take the engine's key and refuse another one."""
    engine = fake_engine(tmp_path, "ignores-key")
    with pytest.raises(EngineStartError) as info:
        engine.start()
    assert info.value.kind == "not-ours" and "does not check its key" in info.value.reason
    assert engine.state is not State.READY
    assert_nothing_left(engine)


def test_a_port_squatter_is_never_called_ready_and_never_sees_the_key(tmp_path: Path) -> None:
    """Another process answers on the engine's port (it took the port first) and accepts
    any key: the start fails as 'not ours' before any key is sent to it."""
    import http.server
    import threading

    seen_auth: list[str] = []

    class Impostor(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen_auth.append(self.headers.get("authorization", ""))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Impostor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        loaded = load_config(fake_config(tmp_path, "slow", after=5))
        engine = launch(loaded, "fake", port=server.server_address[1], log_dir=tmp_path / "logs",
                        nvml_module=FakeNvml(missing=True))
        with pytest.raises(EngineStartError) as info:
            engine.start()
    finally:
        server.shutdown()
    assert info.value.kind == "not-ours" and "is not this engine" in info.value.reason
    assert not any(engine.command.api_key in header for header in seen_auth)
    assert_nothing_left(engine)

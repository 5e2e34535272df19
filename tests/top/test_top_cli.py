"""`animllm top` end to end: --once --json against the real gateway over fake engines
that stream, without a gateway, a gateway that stops, the `q` key in a pseudo-terminal,
and the stream a pipe gets."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.support.gateways import fake_gateway_config, start_gateway
from tests.support.helpers import REPO_ROOT, run_cli

# A fresh interpreter imports the CLI before it draws: generous on a loaded 2-core machine.
START_BOUND_S = 60
# After `q`: the key is read within TICK_S, the reader thread joined within 1 s; the rest margin.
LEAVE_BOUND_S = 10


@pytest.fixture
def local_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    """The NVML `top` reads on this machine (the gateway is handed its own)."""
    fake = FakeNvml([FakeGpu(utilization=(37, 12))])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


@pytest.fixture
def streaming_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """The real gateway over fake engines, with model `a` streaming answers all along."""
    config = fake_gateway_config(tmp_path, chunk_delay=0.005, kv=0.3)
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    running = start_gateway(tmp_path, config, nvml=FakeNvml([FakeGpu()]))
    stop = threading.Event()

    def stream() -> None:
        body = {"model": "a", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with running.client() as client:
            while not stop.is_set():
                with client.stream("POST", "/v1/chat/completions", json=body) as answer:
                    for _ in answer.iter_lines():
                        pass

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    yield running
    stop.set()
    thread.join(timeout=30)
    running.stop()


def test_once_json_reads_the_engines_own_figures_while_they_stream(streaming_gateway, local_gpu) -> None:
    result = run_cli("top", "--once", "--json", "--interval", "0.5")
    assert result.exit_code == 0, result.stderr
    shot = json.loads(result.stdout)
    (engine,) = shot["engines"]
    assert engine["model"] == "a" and engine["state"] == "ready" and engine["kv_cache_usage"] == 0.3
    assert engine["generation_tokens_per_s"] > 0 and engine["requests_running"] is not None
    assert 0.4 <= shot["interval_s"] < 5
    assert shot["gpus"][0]["utilization_gpu_percent"] == 37 and shot["gpus"][0]["name"] == "NVIDIA GeForce RTX 5080"
    assert shot["gateway"]["reachable"] and shot["recent_switches"][0]["to_model"] == "a"


def test_once_for_people_draws_the_same(streaming_gateway, local_gpu) -> None:
    result = run_cli("top", "--once", "--interval", "0.3")
    assert result.exit_code == 0, result.stderr
    assert "tok/s" in result.stdout and "GeForce RTX 5080" in result.stdout and "37%" in result.stdout


def test_without_a_gateway_once_shows_the_gpus_and_exits_1_as_status_does(local_gpu) -> None:
    started = time.monotonic()
    result = run_cli("top", "--once", "--interval", "5")
    assert time.monotonic() - started < 5  # nothing to measure twice
    assert result.exit_code == 1
    assert "gateway not running" in result.stdout and "GeForce RTX 5080" in result.stdout
    assert "no gateway is running" in result.stderr
    shot = json.loads(run_cli("top", "--once", "--json").stdout)
    assert shot["gateway"]["running"] is False and shot["engines"] == [] and len(shot["gpus"]) == 1


def test_a_gateway_that_stops_is_shown_as_such_and_the_reader_goes_on(tmp_path: Path, local_gpu,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from animllm_cli.top.snapshot import Reader

    config = fake_gateway_config(tmp_path)
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    running = start_gateway(tmp_path, config, nvml=FakeNvml([FakeGpu()]))
    reader = Reader("ANIMLLM_API_KEY")
    try:
        assert reader.read().gateway.reachable
        running.stop()
        after = reader.read()
        assert not after.gateway.reachable and after.gpus.gpus and after.status is None
    finally:
        reader.close()


def test_a_gateway_that_hangs_costs_at_most_the_http_bound(local_gpu, monkeypatch: pytest.MonkeyPatch) -> None:
    """Something that accepts the connection and never answers, where the state file points."""
    import socket

    from animllm_cli.runfile import GatewayState
    from animllm_cli.top import snapshot

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setattr("animllm_cli.runfile.read_state",
                            lambda: GatewayState(os.getpid(), url, "127.0.0.1", 0, time.time(), None, []))
        started = time.monotonic()
        scrape = snapshot.Reader("ANIMLLM_API_KEY").read()
        assert time.monotonic() - started < snapshot.HTTP_TIMEOUT_S + 2
    assert scrape.gateway.running and not scrape.gateway.reachable and "does not answer" in scrape.gateway.problem


def _cli_env(**extra: str) -> dict[str, str]:
    # The view sizes itself from the terminal: no COLUMNS/LINES from the test harness.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return {**env, "PYTHONPATH": str(REPO_ROOT), **extra}


def _in_terminal(slave: int, *args: str) -> subprocess.Popen:
    """`animllm ARGS` with the pseudo-terminal as its controlling terminal (as a shell
    runs it): Ctrl-C typed there becomes its SIGINT."""
    return subprocess.Popen([sys.executable, "-m", "animllm_cli", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=_cli_env(TERM="xterm"), start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))


def _read_until(fd: int, wanted: bytes, seen: bytearray, bound_s: float) -> bool:
    deadline = time.monotonic() + bound_s
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            with contextlib.suppress(OSError):  # EIO: the child closed the terminal
                seen += os.read(fd, 65536)
    return wanted in seen


@contextlib.contextmanager
def top_in_terminal(columns: int = 80) -> Iterator[tuple[subprocess.Popen, int, int, list]]:
    """`animllm top` in a pseudo-terminal of 24 rows: (process, master, slave, the
    terminal's settings before it started); killed at the end if it did not leave by itself."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    before = termios.tcgetattr(slave)
    process = _in_terminal(slave, "top", "--interval", "0.2")
    try:
        yield process, master, slave, before
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("columns", [80, 60])
def test_q_leaves_the_full_screen_view_with_exit_0_and_the_terminal_restored(columns: int) -> None:
    seen = bytearray()
    with top_in_terminal(columns) as (process, master, slave, before):
        assert _read_until(master, b"animllm top", seen, START_BOUND_S), seen.decode(errors="replace")
        assert b"\x1b[?1049h" in seen  # the alternate screen
        os.write(master, b"q")
        assert process.wait(timeout=LEAVE_BOUND_S) == 0
        _read_until(master, b"\x1b[?1049l", seen, 2)
        assert b"\x1b[?1049l" in seen  # back to the screen as it was
        assert termios.tcgetattr(slave) == before  # cbreak undone: echo and line editing back
        drawn = seen.decode(errors="replace")
        assert "gateway not running" in drawn and "q quits" in drawn


def test_ctrl_c_leaves_with_exit_0() -> None:
    with top_in_terminal() as (process, master, _, _):
        assert _read_until(master, b"animllm top", bytearray(), START_BOUND_S)
        os.write(master, b"\x03")  # the terminal turns it into SIGINT
        assert process.wait(timeout=LEAVE_BOUND_S) == 0


def test_a_pipe_gets_one_json_line_per_refresh_until_sigterm() -> None:
    process = subprocess.Popen([sys.executable, "-m", "animllm_cli", "top", "--json", "--interval", "0.2"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=_cli_env())
    try:
        lines = [process.stdout.readline() for _ in range(2)]  # bounded by the timeout below
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=LEAVE_BOUND_S) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    shots = [json.loads(line) for line in lines]
    assert all(shot["gateway"]["running"] is False for shot in shots)
    assert shots[1]["taken_at"] > shots[0]["taken_at"]

"""Start a real vLLM server from a shell line in its own process group, and stop the
whole group. Deliberately not the product's supervisor (the tests check the printed
command on its own); the process-group helpers are the product's."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from animllm_cli.config.schema import EngineSection
from animllm_cli.engine import processes
from tests.support.waiting import wait_until

# The product's own bound for an engine start: never wait on this machine's speed.
START_TIMEOUT_S = EngineSection().start_timeout_s
# Asks the installed vLLM's own parser about command lines (run as a script: it imports vLLM).
VLLM_ARGV_CHECK = Path(__file__).with_name("vllm_argv_check.py")


def stop_group(pgid: int, grace_s: float = 30) -> None:
    """SIGTERM the group, SIGKILL whatever is left after the grace period."""
    processes.signal_all(pgid, {}, signal.SIGTERM)
    if processes.wait_gone(pgid, {}, grace_s):
        processes.signal_all(pgid, {}, signal.SIGKILL)


def wait_healthy(proc: subprocess.Popen, port: int, log: Path) -> None:
    def healthy_or_exited() -> bool:
        try:
            return proc.poll() is not None or httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy_or_exited, START_TIMEOUT_S, f"vLLM on port {port} to answer /health")
    except AssertionError as exc:
        pytest.fail(f"{exc}:\n{log.read_text()[-4000:]}")
    if proc.poll() is not None:
        pytest.fail(f"vLLM exited with {proc.returncode} during start:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def running_engine(line: str, port: int, log: Path) -> Iterator[subprocess.Popen]:
    """Run `line` with /bin/sh in a new session; yield once /health answers; stop the group."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(line, shell=True, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_healthy(proc, port, log)
        yield proc
    finally:
        stop_group(proc.pid)  # start_new_session: the shell's pid is the group id
        proc.wait(timeout=30)

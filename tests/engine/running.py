"""Start a real vLLM server from a shell line in its own process group, and stop the
whole group. The tests' own minimal harness, kept apart from the product's supervisor."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import psutil
import pytest

START_TIMEOUT_S = 240


def group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def stop_group(pgid: int, grace_s: float = 30) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_members(pgid):
        os.killpg(pgid, signal.SIGKILL)


def wait_healthy(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vLLM exited with {proc.returncode} during start:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"vLLM not healthy after {START_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


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

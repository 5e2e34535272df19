"""The state file is trusted only when it is ours: `status`/`chat`/`stop`/`switch` send the
API key to the URL it names. A file someone else owns or may write, a link, or one whose
pid is not the gateway that wrote it, is refused with a message naming the file, and left
where it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from animllm_cli.runfile import GatewayState, read_state, state_path, write_state
from tests.support.helpers import run_cli
from tests.support.waiting import wait_until


@pytest.fixture
def sleeper():
    """A live process that is not a gateway; `extra` args end up in its command line."""
    procs = []

    def start(*extra: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *extra])
        procs.append(proc)
        # Until the child has exec'd, its command line is still pytest's (a loaded machine
        # shows that window): wait for its own, within the life it was given.
        wait_until(lambda: "time.sleep(60)" in " ".join(psutil.Process(proc.pid).cmdline()), 60, "the stranger to run")
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _state_for(pid: int, *, cmdline: list[str] | None = None) -> dict:
    record = GatewayState(pid, "http://127.0.0.1:9", "127.0.0.1", 9, time.time() + 1, None, [])
    record.cmdline = cmdline
    return {k: v for k, v in record.__dict__.items() if k != "cmdline" or cmdline is not None}


def _status_refuses(fragment: str) -> None:
    result = run_cli("status")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert f"not using the gateway state file {state_path()}" in result.stderr, result.stderr
    assert fragment in result.stderr, result.stderr
    assert state_path().exists()                 # refused, never silently deleted


def test_the_gateways_own_file_is_trusted() -> None:
    # write_state records the writer's command line (here pytest's, as in the in-process
    # test harness); read_state finds the same live command line behind the pid.
    write_state(GatewayState(os.getpid(), "http://127.0.0.1:9", "127.0.0.1", 9, time.time(), None, []))
    state = read_state()
    assert state is not None and state.pid == os.getpid()
    assert state.cmdline == psutil.Process().cmdline()


def test_a_file_others_may_write_is_refused(sleeper) -> None:
    write_state(GatewayState(os.getpid(), "http://127.0.0.1:9", "127.0.0.1", 9, time.time(), None, []))
    os.chmod(state_path(), 0o666)
    _status_refuses("others may write it (mode 0666)")
    os.chmod(state_path(), 0o620)
    _status_refuses("others may write it (mode 0620)")


def test_a_file_someone_else_owns_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    write_state(GatewayState(os.getpid(), "http://127.0.0.1:9", "127.0.0.1", 9, time.time(), None, []))
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 4242)   # as seen by another user
    _status_refuses(f"it belongs to uid {me}, not to you (uid {me + 4242})")


def test_a_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_text(json.dumps(_state_for(os.getpid())))
    state_path().symlink_to(elsewhere)
    _status_refuses("symbolic link")


def test_a_pid_that_is_not_a_gateway_is_refused(sleeper) -> None:
    proc = sleeper()
    state_path().write_text(json.dumps(_state_for(proc.pid)))   # no recorded command line: an older file
    _status_refuses(f"its pid {proc.pid} is not the gateway that wrote it")
    state_path().write_text(json.dumps(_state_for(proc.pid, cmdline=["animllm", "serve"])))
    _status_refuses("import time; time.sleep(60)")


def test_an_older_file_naming_an_animllm_serve_process_is_trusted(sleeper) -> None:
    proc = sleeper("-m", "animllm_cli", "serve", "coder")
    state_path().write_text(json.dumps(_state_for(proc.pid)))
    state = read_state()
    assert state is not None and state.pid == proc.pid

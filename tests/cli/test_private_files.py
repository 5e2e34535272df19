"""Logs, chat history and the state file are private whatever the umask: files 0600 in
0700 directories (the state dir, its logs/, the cache dir's demo folder), and ones that an
older version left wider are tightened when written again."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from animllm_cli import paths
from tests.support.helpers import free_port, run_cli


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _pump(log: Path, lines: list[str], *, max_bytes: int = 1 << 20) -> None:
    from animllm_cli.engine.logpipe import OutputPump

    read_fd, write_fd = os.pipe()
    pump = OutputPump(read_fd, log, max_bytes=max_bytes)
    os.write(write_fd, "".join(f"{line}\n" for line in lines).encode())
    os.close(write_fd)
    pump.close()


def test_engine_logs_are_private_and_rotate_private() -> None:
    state = paths.state_dir()
    assert mode(state) == 0o755                      # as the test harness made it, before
    log = state / "logs" / "coder.log"
    _pump(log, [f"line {i} " + "x" * 100 for i in range(40)], max_bytes=1000)
    assert mode(log) == 0o600 and mode(log.with_name("coder.log.1")) == 0o600
    assert mode(log.parent) == 0o700 and mode(state) == 0o700


def test_existing_wide_logs_and_dirs_are_tightened_when_written() -> None:
    logs = paths.state_dir() / "logs"
    logs.mkdir(mode=0o755)
    (logs / "coder.log").write_text("old\n")
    (logs / "coder.log.1").write_text("older\n")
    os.chmod(logs / "coder.log", 0o644)
    os.chmod(logs / "coder.log.1", 0o666)
    _pump(logs / "coder.log", ["new"])
    assert (logs / "coder.log").read_text() == "old\nnew\n"
    assert mode(logs / "coder.log") == 0o600 and mode(logs / "coder.log.1") == 0o600 and mode(logs) == 0o700


def test_demo_gateway_logs_make_the_cache_demo_folder_private(monkeypatch: pytest.MonkeyPatch) -> None:
    # The demo runs its gateway with ANIMLLM_STATE_DIR under the cache dir's demo/ folder.
    demo_state = paths.cache_dir() / "demo" / "state"
    monkeypatch.setenv("ANIMLLM_STATE_DIR", str(demo_state))
    _pump(demo_state / "logs" / "tiny-a.log", ["hello"])
    for directory in (demo_state / "logs", demo_state, demo_state.parent, paths.cache_dir()):
        assert mode(directory) == 0o700, directory
    assert mode(demo_state / "logs" / "tiny-a.log") == 0o600


def test_private_dir_leaves_directories_outside_animllms_alone(tmp_path: Path) -> None:
    outside = tmp_path / "shared" / "logs"
    paths.private_dir(outside)
    assert mode(outside) == 0o700 and mode(outside.parent) == 0o755


def test_state_file_is_private_and_tightened() -> None:
    from animllm_cli.runfile import GatewayState, state_path, write_state

    path = state_path()
    path.write_text("{}")
    os.chmod(path, 0o644)
    write_state(GatewayState(os.getpid(), "http://127.0.0.1:1", "127.0.0.1", 1, time.time(), None, []))
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert not path.with_suffix(".tmp").exists()


def test_chat_history_is_private(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("readline")
    from animllm_cli.cli import chat as chat_cli

    registered = []
    monkeypatch.setattr("atexit.register", lambda fn, *args: registered.append((fn, args)))
    history = paths.state_dir() / "chat_history"
    history.write_text("an old question\n")
    os.chmod(history, 0o644)
    chat_cli._readline_input()
    assert mode(history) == 0o600 and mode(history.parent) == 0o700
    history.unlink()                                   # a history file written afresh at exit
    for fn, args in registered:
        fn(*args)
    assert history.exists() and mode(history) == 0o600


def test_detached_gateway_log_is_private(monkeypatch: pytest.MonkeyPatch) -> None:
    from animllm_cli.cli import serve as serve_cli

    def popen(argv, **kwargs):  # the detached child: here one that says a line and exits
        return subprocess.Popen([sys.executable, "-c", "print('the gateway says hi')"], **kwargs)

    monkeypatch.setattr(serve_cli, "subprocess", types.SimpleNamespace(
        Popen=popen, DEVNULL=subprocess.DEVNULL, STDOUT=subprocess.STDOUT))
    log = paths.state_dir() / "gateway.log"
    log.write_text("an older run\n")
    os.chmod(log, 0o644)
    result = run_cli("serve", "--detach", "--no-pull", "--port", str(free_port()))
    assert result.exit_code == 1 and "the gateway says hi" in result.stderr, result.stderr
    assert mode(log) == 0o600 and mode(log.parent) == 0o700

"""The engine dies with its owner, whatever ends the owner (the watchdog of launcher.py);
a hung engine declared dead is stopped at once; a stop during a start ends the start.
Every wait is bounded by the config's own numbers (grace, health probe), never by this
machine's speed."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from animllm_cli.config import load_config
from animllm_cli.engine import launcher, processes
from animllm_cli.engine.supervisor import EngineStartError, State
from tests.support.fake_engines import assert_nothing_left, fake_config, fake_engine
from tests.support.helpers import REPO_ROOT
from tests.support.waiting import wait_until

KILL_WAIT_S = launcher.KILL_WAIT_S  # what the product waits after SIGKILL


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def teardown_bound_s(config: Path) -> float:
    """SIGTERM, the grace period, SIGKILL and its wait, and a second for the watchdog's probe."""
    return load_config(config).config.engine.stop_grace_s + KILL_WAIT_S + launcher.PROBE_S + 1


OWNER = """
import sys, time
from pathlib import Path
from animllm_cli.config import load_config
from animllm_cli.engine.supervisor import launch
engine = launch(load_config(sys.argv[1]), "fake", log_dir=Path(sys.argv[2]))
engine.start()
print(engine.pid, engine.watchdog_pid, flush=True)
time.sleep(3600)
"""


@pytest.mark.parametrize("mode", ["fork-ready", "ignore-term"])
def test_engine_group_dies_when_its_owner_is_killed(tmp_path: Path, mode: str) -> None:
    """SIGKILL leaves no atexit hook to run: the watchdog sees the owner's pipe close."""
    config = fake_config(tmp_path, mode, stop_grace_s=1)
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(config), str(tmp_path / "logs")],
                             stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    pgid, watchdog = (int(word) for word in owner.stdout.readline().split())
    try:
        assert processes.group_members(pgid), "the engine should be running"
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        wait_until(lambda: not processes.group_members(pgid), teardown_bound_s(config),
                   "the engine's processes to end with their owner")
        wait_until(lambda: gone(watchdog), teardown_bound_s(config), "the watchdog to end with the engine")
    finally:
        owner.kill()
        owner.wait()
        processes.end_group(pgid, {}, 0.1)


def test_the_watchdog_is_not_an_engine_process_and_leaves_after_a_stop(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "fork-ready")
    engine.start()
    watchdog = psutil.Process(engine.watchdog_pid)
    assert engine.watchdog_pid not in engine.pids()  # neither in the group nor in the tree
    assert watchdog.cmdline()[-len(engine.command.argv):] == engine.command.argv
    assert engine.stop().left == []
    wait_until(lambda: gone(watchdog.pid), launcher.PROBE_S + 1, "the watchdog to leave")
    assert_nothing_left(engine)


def test_the_watchdog_leaves_when_the_engine_dies_on_its_own(tmp_path: Path) -> None:
    """It must not outlive the engine's group: that group id may be reused by a stranger."""
    engine = fake_engine(tmp_path, "die-after-ready", after=3)
    engine.start()
    wait_until(lambda: engine.state is State.DEAD, 10, "the engine to be seen dead")
    wait_until(lambda: gone(engine.watchdog_pid), launcher.PROBE_S + 1, "the watchdog to leave")
    engine.stop()


def test_the_engine_log_holds_only_the_engines_output(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "ok")
    engine.start()
    engine.stop()
    lines = engine.log_path.read_text().splitlines()
    assert lines and all(line.startswith("(APIServer pid=") for line in lines), lines


def test_hung_engine_declared_dead_is_stopped_at_once(tmp_path: Path) -> None:
    """/health hangs and SIGTERM goes unhandled: once declared dead, its group is ended
    (SIGKILL after the grace) without waiting for anyone to call stop()."""
    engine = fake_engine(tmp_path, "hang-after-ready", after=0.5, stop_grace_s=1)
    engine.start()
    settings = engine.settings
    probe_s = settings.health_interval_s + min(5.0, settings.health_interval_s * 2)  # interval + probe timeout
    wait_until(lambda: engine.state is State.DEAD, 0.5 + settings.health_failures * probe_s + 5, "the hung engine to be seen dead")
    assert engine.deaths == ["/health failed 3 times in a row"]
    wait_until(lambda: not processes.group_members(engine.pid), settings.stop_grace_s + KILL_WAIT_S + 1,
               "the dead engine's processes to end")
    assert engine.state is State.DEAD  # still reported as dead, with its reason
    assert engine.stop().left == []
    assert_nothing_left(engine)


def test_stop_during_start_ends_the_start_at_once(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "slow", after=60, stall_timeout_s=60)
    threading.Timer(1.0, engine.stop).start()
    started = time.monotonic()
    with pytest.raises(EngineStartError) as info:
        engine.start()
    assert info.value.kind == "stopped" and "stopped while starting" in info.value.reason
    assert time.monotonic() - started < 1.0 + engine.settings.stop_grace_s + KILL_WAIT_S + 1
    assert engine.state is State.STOPPED
    assert_nothing_left(engine)


def test_stop_before_start_launches_nothing(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "ok")
    engine.stop()
    with pytest.raises(EngineStartError) as info:
        engine.start()
    assert info.value.kind == "stopped"
    assert engine.pid is None

"""How an engine's death after ready is found and said (engine/deaths.py, Engine.check): the
check a failed request asks for finds a healthy engine alive, and a dead one dead with its
signal or exit code, a process it ran with gone, and its failing health; a log that names
an out-of-memory makes the death of that kind. The fake engines' watchers are slowed down,
so that each death here is the check's."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import psutil

from animllm_cli.engine import deaths, processes
from animllm_cli.engine.supervisor import State
from tests.support.fake_engines import assert_nothing_left, fake_engine
from tests.support.waiting import wait_until

SLOW_WATCHER = {"health_interval_s": 30}
BOUND_S = 10  # a fake engine's process ends, and its health turns, within this


def test_a_healthy_engine_is_found_alive(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "ok", **SLOW_WATCHER)
    engine.start()
    assert engine.check() is None and engine.state is State.READY and engine.deaths == []
    assert engine.stop().left == []


def test_a_killed_engine_is_found_dead_with_its_signal_and_the_processes_gone_before_it(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "fork-ready", **SLOW_WATCHER)
    engine.start()
    (worker,) = engine.pids() - {engine.pid}   # as vLLM's EngineCore beside its API server
    name = psutil.Process(worker).name()
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: psutil.Process(worker).status() == psutil.STATUS_ZOMBIE, BOUND_S, "the worker to die")
    os.kill(engine.pid, signal.SIGKILL)
    found = engine.check()
    assert found is not None and engine.state is State.DEAD
    assert (found.kind, found.signal, found.exit_code) == ("signal", "SIGKILL", None)
    assert found.cause == "the engine process was killed by SIGKILL" and engine.deaths == [found.cause]
    assert found.gone == [f"{name} (pid {worker})"]
    assert engine.death_reason == f"{found.cause}; already gone: {name} (pid {worker})"
    assert engine.check() is found  # asked again: the same death, told once
    assert engine.stop().left == []
    assert_nothing_left(engine)


def test_an_engine_that_lost_a_process_it_ran_with_is_found_dead(tmp_path: Path) -> None:
    """As vLLM whose EngineCore died: the API server still runs and its /health says 200."""
    engine = fake_engine(tmp_path, "fork-ready", **SLOW_WATCHER)
    engine.start()
    (worker,) = engine.pids() - {engine.pid}
    name = psutil.Process(worker).name()
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: psutil.Process(worker).status() == psutil.STATUS_ZOMBIE, BOUND_S, "the worker to die")
    assert httpx.get(f"{engine.base_url}/health").status_code == 200
    found = engine.check()
    assert found is not None and (found.kind, found.gone) == ("process-gone", [f"{name} (pid {worker})"])
    assert found.signal is None and found.exit_code is None
    assert engine.stop().left == []
    assert_nothing_left(engine)


def test_a_helper_process_that_exits_on_its_own_is_no_death(tmp_path: Path) -> None:
    """Only the processes an API server cannot serve without count (vLLM's EngineCore and
    workers, by name): a helper of its tree at ready (vLLM's multiprocessing resource
    tracker, say) that exits leaves the engine alive."""
    engine = fake_engine(tmp_path, "helper-ready", **SLOW_WATCHER)
    engine.start()
    (helper,) = [pid for pid in engine.pids() - {engine.pid} if psutil.Process(pid).name() != "EngineCore"]
    os.kill(helper, signal.SIGKILL)
    wait_until(lambda: psutil.Process(helper).status() == psutil.STATUS_ZOMBIE, BOUND_S, "the helper to die")
    assert engine.check() is None and engine.state is State.READY and engine.deaths == []
    assert engine.stop().left == []


class Fleeting:
    """A known process that has gone; asked whether it runs, it lets `meanwhile` run first (as
    another thread would, between two steps of the reader's loop)."""

    def __init__(self, meanwhile) -> None:
        self.meanwhile = meanwhile

    def is_running(self) -> bool:
        self.meanwhile()
        return False

    def send_signal(self, sig: int) -> None:
        pass


def test_its_known_processes_may_grow_while_another_thread_reads_them(tmp_path: Path, monkeypatch) -> None:
    """The watcher, a request's check, the teardown of a dead engine and the NVML sampling
    read the processes an engine knows on threads of their own, while others add the ones
    they find: a reader never meets a dict that changes under it."""
    engine = fake_engine(tmp_path, "ok", **SLOW_WATCHER)
    engine.start()
    found = iter(range(2**22, 2**22 + 100))  # above any pid: processes that have gone
    tree = processes.tree
    monkeypatch.setattr(processes, "tree", lambda pid: {**tree(pid), next(found): Fleeting(lambda: None)})
    engine._known = {**engine._known, next(found): Fleeting(engine._remember_tree)}
    assert engine.pids() == {engine.pid}
    assert engine.stop().left == []


def test_an_engine_whose_health_fails_is_found_dead_at_once(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, "sick-after-ready", after=0.5, **SLOW_WATCHER)
    engine.start()
    wait_until(lambda: httpx.get(f"{engine.base_url}/health").status_code == 503, BOUND_S, "its /health to fail")
    found = engine.check()
    assert found is not None and (found.kind, found.cause) == ("unhealthy", "/health answered 503")
    assert engine.stop().left == []


def test_the_kind_names_the_first_failure_an_out_of_memory_a_lost_process_a_signal() -> None:
    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."
    found = deaths.described(*deaths.exit_cause(1), status=1, gone=[], log=["INFO serving", oom, "INFO shutting down"])
    assert (found.kind, found.exit_code, found.signal, found.log_line) == ("out-of-memory", 1, None, oom)
    assert found.summary() == f"the engine process exited with code 1; its log: {oom}"
    killed = deaths.described(*deaths.exit_cause(-9), status=-9, gone=[], log=["INFO serving"])
    assert (killed.kind, killed.signal, killed.exit_code, killed.log_line) == ("signal", "SIGKILL", None, None)
    core = deaths.described(*deaths.exit_cause(0), status=0, gone=["VLLM::EngineCore (pid 7)"], log=[])
    assert (core.kind, core.exit_code) == ("process-gone", 0)  # it ended itself over its lost EngineCore

"""Test harness: every test runs with its own config/state/cache dirs, in an empty working
directory, with no animllm overrides from the developer's shell, NO_COLOR and a fixed width."""

from __future__ import annotations

import fcntl
import os
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.helpers import REPO_ROOT
from tests.support import engine_starts
from tests.support.environment import isolate, require_vllm


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    isolate(monkeypatch, tmp_path / "animllm-home")
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    from animllm_cli.engine.python_env import probe_python_cached

    probe_python_cached.cache_clear()  # a test may say what the engine's Python has (tests/doctor/conftest.py)
    return workdir


@pytest.fixture(autouse=True)
def _engine_tier_needs_vllm(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("engine") is not None or request.node.get_closest_marker("vllm") is not None:
        require_vllm()


@pytest.fixture(scope="session")
def tiny_models(three_tiny_models: dict[str, Path]) -> dict[str, Path]:
    """Two distinct tiny Qwen2 models, built locally once and reused across runs."""
    return {name: path for name, path in three_tiny_models.items() if name in ("tiny-a", "tiny-b")}


@pytest.fixture(scope="session")
def three_tiny_models() -> dict[str, Path]:
    """Three distinct tiny Qwen2 models (tiny-a, tiny-b, tiny-c), for the engine pool."""
    from animllm_cli.demo.tiny_models import build_tiny_models

    root = REPO_ROOT / ".pytest_cache" / "animllm-tiny-models"
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist workers: one builds them, the others then reuse them
        return build_tiny_models(root)


@pytest.fixture
def upstream_servers() -> Iterator[list]:
    """Fake remote servers (tests/fakes/upstream.py) a test starts and appends here: each stopped at the end."""
    started: list = []
    yield started
    for server in started:
        server.stop()


# The budget of real engine starts (tests/support/engine_starts.py): every start this run
# makes is counted, whoever makes it, and printed at the end; a test file outside the
# allowed list that starts an engine of its own fails the run.
_watcher_key = pytest.StashKey[engine_starts.Watcher]()
_over_key = pytest.StashKey[list]()


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller set the marks
        return
    record = Path(tempfile.mkstemp(prefix="animllm-engine-starts-", suffix=".jsonl")[1])
    os.environ[engine_starts.RUN_MARK] = uuid.uuid4().hex
    os.environ[engine_starts.RECORD_FILE] = str(record)


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.get_closest_marker("engine") for item in session.items):
        watcher = engine_starts.Watcher(os.environ[engine_starts.RUN_MARK], Path(os.environ[engine_starts.RECORD_FILE]))
        watcher.start()
        session.config.stash[_watcher_key] = watcher


def pytest_sessionfinish(session: pytest.Session) -> None:
    watcher = session.config.stash.get(_watcher_key, None)
    if watcher is not None:
        watcher.stop()
    if hasattr(session.config, "workerinput"):
        return
    over = engine_starts.over_budget(engine_starts.read_starts(Path(os.environ[engine_starts.RECORD_FILE])))
    session.config.stash[_over_key] = over
    if over and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    record = Path(os.environ.get(engine_starts.RECORD_FILE, ""))
    starts = engine_starts.read_starts(record) if record.name else []
    if starts:
        terminalreporter.write_sep("=", "real engine starts")
        for line in engine_starts.summary_lines(starts):
            terminalreporter.write_line(line)
    for start in config.stash.get(_over_key, []):
        terminalreporter.write_line(
            f"FAILED engine start budget: {start.test} started an engine of its own (pid {start.pid}); use the "
            f"shared engines (tests/support) or add its file to OWN_STARTS_ALLOWED with the reason", red=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and engine_starts.RECORD_FILE in os.environ:
        Path(os.environ.pop(engine_starts.RECORD_FILE)).unlink(missing_ok=True)

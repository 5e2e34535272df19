"""The budget of real engine starts (tests/support/engine_starts.py): the check that fails
a run when a test file outside the allowed list starts an engine of its own, and the
watcher that counts starts, against a stand-in for vLLM's server module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.helpers import free_port, write
from tests.support import engine_starts
from tests.support.engine_starts import Start, Watcher, engine_port, over_budget, read_starts, summary_lines
from tests.support.waiting import wait_until


def start(test: str, shared: bool = False, pid: int = 1) -> Start:
    return Start(pid=pid, test=test, shared=shared, seconds=30.0, ready=True)


def test_a_start_of_its_own_outside_the_allowed_files_is_over_budget() -> None:
    mine = start("tests/cli/test_new_feature.py::test_it (call)")
    allowed = start("tests/real_engine/test_demo.py::test_demo_runs_the_whole_flow (call)", pid=2)
    shared = start("tests/cli/test_new_feature.py::test_it (setup)", shared=True, pid=3)
    assert over_budget([mine, allowed, shared]) == [mine]
    assert over_budget([start("", pid=4)]) == [start("", pid=4)]  # a start made outside any test is nobody's to make
    assert over_budget([mine], allowed=frozenset({"test_new_feature.py"})) == []


def test_only_vllms_server_module_is_an_engine() -> None:
    python = sys.executable
    assert engine_port([python, "-m", "vllm.entrypoints.openai.api_server", "--model", "m", "--port", "8123"]) == 8123
    assert engine_port([python, "-m", "vllm.entrypoints.openai.api_server", "--model", "m"]) == 8000
    assert engine_port([python, "-m", "tests.fakes.fake_vllm", "--port", "8123"]) is None
    assert engine_port(["/bin/sh", "-c", f"{python} -m vllm.entrypoints.openai.api_server --port 1"]) is None
    assert engine_port([python, "vllm_argv_check.py"]) is None
    # the engine's launcher (and the watchdog it forks) passes the engine's command line on
    launcher = [python, "-I", "-S", "launcher.py", "5", "6", "5", "--", python, "-m", "vllm.entrypoints.openai.api_server"]
    assert engine_port(launcher) is None
    assert engine_port([python, "-I", "-m", "vllm.entrypoints.openai.api_server", "--port", "9"]) == 9


def test_the_summary_counts_starts_and_seconds_by_file() -> None:
    starts = [start("tests/a/test_x.py::t (call)"), start("tests/a/test_x.py::u (call)", pid=2),
              Start(3, "tests/a/test_y.py::t (call)", False, 12.0, ready=False), start("", shared=True, pid=4)]
    lines = summary_lines(starts)
    assert lines[0] == "real engine starts: 4, 102 s in all"
    assert any("test_x.py" in line and " 2 starts" in line and "60 s" in line for line in lines)
    assert any("test_y.py" in line and "(1 never ready)" in line for line in lines)
    assert any("shared engines" in line and " 1 starts" in line for line in lines)


STAND_IN = '''
import http.server, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
'''


def test_the_watcher_counts_a_start_of_this_run_and_names_its_test(tmp_path: Path) -> None:
    """A stand-in `vllm.entrypoints.stand_in` that answers /health: a start of this run is
    recorded ready, with the test that made it; the same module started without the
    run's mark (another run on this machine) is not counted."""
    write(tmp_path / "site" / "vllm" / "__init__.py", "")
    write(tmp_path / "site" / "vllm" / "entrypoints" / "__init__.py", "")
    write(tmp_path / "site" / "vllm" / "entrypoints" / "stand_in.py", STAND_IN)
    record = tmp_path / "starts.jsonl"
    watcher = Watcher("this-run", record)
    watcher.start()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    ours = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.stand_in", "--port", str(free_port())],
                            env={**env, engine_starts.RUN_MARK: "this-run"})
    others = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.stand_in", "--port", str(free_port())],
                              env={**env, engine_starts.RUN_MARK: "another-run"})
    try:
        wait_until(lambda: read_starts(record), 60, "the watcher to record the stand-in's start")
    finally:
        for proc in (ours, others):
            proc.kill()
            proc.wait()
        watcher.stop()
    (recorded,) = read_starts(record)
    assert recorded.pid == ours.pid and recorded.ready and not recorded.shared
    assert recorded.test.startswith("tests/architecture/test_engine_start_budget.py::test_the_watcher_counts")

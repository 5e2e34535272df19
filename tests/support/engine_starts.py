"""Count the real engine starts of a test run, and hold them to a budget.

Every real vLLM server this run starts is seen, whoever starts it: the product's
supervisor in the test process, an `animllm serve` subprocess, the demo, or a test
that runs vLLM's command line itself. A watcher thread polls the process table for
`python -m vllm.entrypoints...` processes whose environment carries this run's mark
(ENGINE_STARTS_RUN, inherited from the test process). From the same environment it reads
which test made the start (PYTEST_CURRENT_TEST, which pytest keeps in os.environ) and
whether the shared engine fixture made it (SHARED_MARK). A start lasts from the
process's creation until its /health answers 200, or until it exits (a failed start).

The watcher appends one JSON line per start to a file, so that a run split over
processes (pytest-xdist workers) adds up in the one that prints the summary.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil

from animllm_cli.engine.standby import STANDBY_MARK

RUN_MARK = "ENGINE_STARTS_RUN"             # this run's id, in every process it starts
RECORD_FILE = "ENGINE_STARTS_FILE"          # where the watcher writes its lines
SHARED_MARK = "ENGINE_STARTS_SHARED"        # set while the shared engine fixture starts its engines
ENGINE_MODULE_PREFIX = "vllm.entrypoints."
POLL_S = 0.25

# Test files allowed to start their own engines: each kills, crashes, times or counts
# engine starts, which a shared engine cannot give. Any other test uses the shared one.
OWN_STARTS_ALLOWED = frozenset({
    "test_demo.py",                     # the whole flow: three models, an eviction
    "test_pool_real.py",                # eviction and keep-alive on the shared engines: loads are the subject
    "test_supervisor_real.py",          # a start vLLM rejects
    "test_soak_real.py",                # engines and the gateway SIGKILLed under load
    "test_upstream_real.py",            # its own gateway's local model beside remote ones
    "test_gateway_real.py",             # an EngineCore SIGKILLed and restarted; switches counted; serve --detach, stop
    "test_bench_real.py",               # a load measured inside a mix
    "test_apis_real.py",                # each API's first request goes through a load (issue #33), then put back
})


@dataclass
class Start:
    pid: int
    test: str           # the node id of the test that made it ("" when made outside a test)
    shared: bool        # made by the shared engine fixture
    seconds: float      # creation to /health 200, or to its exit
    ready: bool


def test_file(nodeid: str) -> str:
    """`tests/x/test_y.py::test_z (call)` -> `test_y.py`."""
    return Path(nodeid.split("::")[0]).name


def over_budget(starts: list[Start], allowed: frozenset[str] = OWN_STARTS_ALLOWED) -> list[Start]:
    """The starts that a test outside the allowed files made on its own."""
    return [s for s in starts if not s.shared and test_file(s.test) not in allowed]


def engine_port(cmdline: list[str]) -> int | None:
    """The engine's port when `cmdline` runs vLLM's server as a module, else None: the
    interpreter's own `-m`, not one in the command line a launcher (or its watchdog) passes on."""
    if "-m" not in cmdline[:-1]:
        return None
    module_at = cmdline.index("-m") + 1
    if not cmdline[module_at].startswith(ENGINE_MODULE_PREFIX) \
            or not all(arg.startswith("-") for arg in cmdline[1:module_at - 1]):
        return None
    if "--port" in cmdline[:-1]:
        return int(cmdline[cmdline.index("--port") + 1])
    return 8000  # vLLM's own default


class Watcher:
    """Polls the process table in a daemon thread; `stop()` ends it and records what is pending."""

    def __init__(self, run_id: str | None, record: Path) -> None:
        """`run_id` None: every engine started on this machine (to watch a run from outside)."""
        self.run_id, self.record = run_id, record
        self._pending: dict[tuple[int, float], tuple[psutil.Process, int, str, bool]] = {}
        self._seen: set[tuple[int, float]] = set()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-start-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)
        for (pid, created), (_, _, test, shared) in self._pending.items():
            self._write(Start(pid, test, shared, time.time() - created, ready=False))
        self._pending.clear()

    def _run(self) -> None:
        while not self._stopped.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
            key = (proc.info["pid"], proc.info["create_time"])
            if key in self._seen:
                continue
            port = engine_port(proc.info["cmdline"] or [])
            if port is None:
                continue  # not (yet) an engine: a launcher execs into one, so look again next time
            self._seen.add(key)
            try:
                env = proc.environ()
            except psutil.Error:
                continue
            if self.run_id is not None and env.get(RUN_MARK) != self.run_id:
                continue
            if env.get(STANDBY_MARK):
                # A standby made earlier became this engine just now (its title changed): its
                # start began now, for the test its owner runs now.
                key, env = (key[0], time.time()), _owner_environment(proc) or env
            test = env.get("PYTEST_CURRENT_TEST", "")
            self._pending[key] = (proc, port, test, env.get(SHARED_MARK) == "1")
        for key, (proc, port, test, shared) in list(self._pending.items()):
            ended = not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
            if ended or _healthy(port):
                self._write(Start(key[0], test, shared, time.time() - key[1], ready=not ended))
                del self._pending[key]

    def _write(self, start: Start) -> None:
        with self.record.open("a") as out:
            out.write(json.dumps(asdict(start)) + "\n")


def _owner_environment(proc: psutil.Process) -> dict[str, str] | None:
    """The environment of the process that owns a standby now: ours as it is now (pytest
    keeps the current test in os.environ), or a gateway's as it began (one per test)."""
    try:
        owner = proc.parent()
        if owner is None:
            return None
        return dict(os.environ) if owner.pid == os.getpid() else owner.environ()
    except psutil.Error:
        return None


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def read_starts(record: Path) -> list[Start]:
    """The starts recorded, each once (under xdist every worker that collected the engine
    tier watches, and they see the same processes)."""
    if not record.exists():
        return []
    chosen: dict[int, Start] = {}
    for line in record.read_text().splitlines():
        start = Start(**json.loads(line)) if line.strip() else None
        # A standby's engine is named by its owner's current test, which only the owner's
        # watcher knows: a line that names a test wins over one that does not.
        if start is not None and (start.pid not in chosen or (start.test and not chosen[start.pid].test)):
            chosen[start.pid] = start
    return list(chosen.values())


def summary_lines(starts: list[Start]) -> list[str]:
    """The run's starts, by test file, for the end of the run."""
    lines = [f"real engine starts: {len(starts)}, {sum(s.seconds for s in starts):.0f} s in all"]
    by_file: dict[str, list[Start]] = {}
    for start in starts:
        by_file.setdefault("shared engines" if start.shared else test_file(start.test) or "(no test)", []).append(start)
    for name, group in sorted(by_file.items()):
        failed = sum(1 for s in group if not s.ready)
        lines.append(f"  {name:<36} {len(group):>3} starts {sum(s.seconds for s in group):>6.0f} s"
                     + (f" ({failed} never ready)" if failed else ""))
    return lines


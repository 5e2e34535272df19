"""Real vLLM (CPU build) dies with its owner: the owner of a ready tiny engine is killed
with SIGKILL (no atexit hook runs), and the API server, EngineCore and workers are all
gone within the grace period (the watchdog of launcher.py). vLLM issue #55510 is what
happens without it: EngineCore keeps running, and on a GPU keeps its VRAM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from animllm_cli.config import load_config
from animllm_cli.engine import processes
from tests.support.helpers import REPO_ROOT, tiny_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.engine

OWNER = """
import sys, time
from pathlib import Path
from animllm_cli.config import load_config
from animllm_cli.engine.supervisor import launch
engine = launch(load_config(sys.argv[1]), "tiny-a", log_dir=Path(sys.argv[2]))
engine.start()
print(engine.pid, len(engine.pids()), flush=True)
time.sleep(3600)
"""


def test_real_engine_dies_with_its_killed_owner(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "animllm.yaml", tiny_models)
    grace_s = load_config(config).config.engine.stop_grace_s
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(config), str(tmp_path / "logs")],
                             stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    line = owner.stdout.readline()  # the owner's own start bound ends this wait (it exits on failure)
    assert line, f"the owner could not start the engine; log in {tmp_path / 'logs'}"
    pgid, count = (int(word) for word in line.split())
    try:
        assert count > 1, "expected EngineCore beside the API server"
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        killed = time.monotonic()
        wait_until(lambda: not processes.group_members(pgid), grace_s + 5 + 1,  # SIGTERM, the grace, SIGKILL, its wait
                   "the engine's group to end with its killed owner")
        print(f"\nengine group gone {time.monotonic() - killed:.1f}s after its owner was killed")
    finally:
        owner.kill()
        owner.wait()
        processes.end_group(pgid, {}, 1)

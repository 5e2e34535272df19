"""`animllm chat` through the gateway to real vLLM (CPU build) and the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.harness import start_gateway
from tests.helpers import run_cli, tiny_config

pytestmark = pytest.mark.engine


def test_one_shot_and_a_repl_that_switches_models(tiny_models: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(tmp_path / "animllm.yaml", tiny_models)
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    gw = start_gateway(tmp_path, config, model="tiny-a")
    try:
        once = run_cli("chat", "-p", "hello", "--max-tokens", "5")
        assert once.exit_code == 0, once.stderr
        assert once.stdout.endswith("\n") and once.stdout.strip()
        assert "tiny-a" in once.stderr.splitlines()[-1]                    # the stats line names the model

        session = run_cli("chat", "-i", "--max-tokens", "4", input="hi\n/model tiny-b\nhello again\n/exit\n")
        assert session.exit_code == 0, session.stderr
        stats = [line for line in session.stderr.splitlines() if "tokens · " in line]
        assert len(stats) == 2 and stats[0].endswith("tiny-a") and stats[1].endswith("tiny-b")
        assert "switched tiny-a -> tiny-b" in session.stderr
        assert gw.gateway.pool.model == "tiny-b"
    finally:
        gw.stop()

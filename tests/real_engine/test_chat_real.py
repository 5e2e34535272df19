"""`animllm chat` through the gateway to real vLLM (CPU build) and the tiny models (the
shared engines: both resident, so `/model` finds tiny-b loaded)."""

from __future__ import annotations

import pytest

from tests.support.gateways import RunningGateway
from tests.support.helpers import run_cli

pytestmark = pytest.mark.engine


def test_one_shot_and_a_repl_that_switches_models(shared_gateway: RunningGateway) -> None:
    once = run_cli("chat", "-p", "hello", "--max-tokens", "5")
    assert once.exit_code == 0, once.stderr
    assert once.stdout.endswith("\n") and once.stdout.strip()
    assert "tiny-a" in once.stderr.splitlines()[-1]                    # the stats line names the model

    session = run_cli("chat", "-i", "--max-tokens", "4", input="hi\n/model tiny-b\nhello again\n/exit\n")
    assert session.exit_code == 0, session.stderr
    stats = [line for line in session.stderr.splitlines() if "tokens · " in line]
    assert len(stats) == 2 and stats[0].endswith("tiny-a") and stats[1].endswith("tiny-b")
    assert "switched" not in session.stderr                               # tiny-b was resident: nothing loaded

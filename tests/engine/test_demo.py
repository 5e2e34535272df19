"""`animllm demo` end to end: tiny models, gateway, two chats with a switch, a short
benchmark, teardown, and a summary that says nothing was left running."""

from __future__ import annotations

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.engine


def test_demo_runs_the_whole_flow() -> None:
    result = run_cli("demo", "--cpu")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "nothing left running" in result.stdout and "yes" in result.stdout.split("nothing left running")[1][:40]
    assert "16 / 0" in result.stdout                     # every benchmark request completed
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert step in result.stderr
    assert "switch tiny-a -> tiny-b took" in result.stderr

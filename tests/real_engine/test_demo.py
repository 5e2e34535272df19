"""`animllm demo` end to end: tiny models, gateway, two models resident together, a third
that evicts the least recently used, a short benchmark, teardown, and a summary that says
nothing was left running."""

from __future__ import annotations

import pytest

from tests.support.helpers import run_cli

pytestmark = pytest.mark.engine


def test_demo_runs_the_whole_flow() -> None:
    result = run_cli("demo", "--cpu")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "nothing left running" in result.stdout and "yes" in result.stdout.split("nothing left running")[1][:40]
    assert "16 / 0" in result.stdout                     # every benchmark request completed
    for step in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6"):
        assert step in result.stderr
    assert "tiny-b loaded on GPU 0" in result.stderr and "nothing evicted" in result.stderr
    assert "tiny-a + tiny-b" in result.stdout                 # two resident together
    assert "evicted tiny-b (least recently used)" in result.stderr   # tiny-a was used after tiny-b
    assert "tiny-a + tiny-c" in result.stdout

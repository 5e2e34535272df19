"""`animllm switch` and `status` against a running gateway over fake engines: what goes to
stdout, what to stderr, and what `-q` silences."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.harness import fake_gateway_config, start_gateway
from tests.helpers import run_cli


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A gateway with model `a` loaded; `switch` and `status` find it through the state file."""
    config = fake_gateway_config(tmp_path)
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    running = start_gateway(tmp_path, config)
    yield running
    running.stop()


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_quiet_switch_prints_nothing_on_stderr(gateway, terminal: bool) -> None:
    # TTY_COMPATIBLE=1 makes Rich take stderr for a terminal: the spinner path.
    env = {"TTY_COMPATIBLE": "1"} if terminal else None
    quiet = run_cli("-q", "switch", "b", env=env)
    assert quiet.exit_code == 0, quiet.stderr
    assert quiet.stderr == ""
    assert "a -> b" in quiet.stdout  # the report is data: -q keeps it

    loud = run_cli("switch", "a", env=env)
    assert loud.exit_code == 0, loud.stderr
    assert "loading a" in loud.stderr and "b -> a" in loud.stdout


def test_quiet_switch_still_prints_errors(gateway) -> None:
    result = run_cli("-q", "switch", "no-such-model")
    assert result.exit_code == 1 and "not found" in result.stderr


def test_switch_json_is_only_the_report(gateway) -> None:
    import json

    result = run_cli("switch", "b", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["from_model"], report["to_model"], report["outcome"]) == ("a", "b", "ok")


def test_status_table_names_the_loaded_model_who_waits_and_why_it_was_loaded(gateway) -> None:
    with gateway.one_waiting(busy="a", waiting="b"):
        result = run_cli("status")
    assert result.exit_code == 0, result.stderr
    assert gateway.url in result.stdout and "a (ready)" in result.stdout
    assert "waiting for b" in result.stdout and "1 (oldest 0s)" in result.stdout
    assert "-> a: ok in" in result.stdout and "(nothing was loaded)" in result.stdout


def test_admin_commands_against_a_gateway_with_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a key, admin routes need it even from loopback: the commands send the one in
    the caller's environment, and without it say so; `stop` never kills a gateway that
    merely refused it."""
    config = fake_gateway_config(tmp_path)
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    monkeypatch.delenv("ANIMLLM_API_KEY", raising=False)
    running = start_gateway(tmp_path, config, key="k-123")
    try:
        for command in (["status"], ["switch", "b"], ["stop"]):
            refused = run_cli(*command)
            assert refused.exit_code == 1, command
            assert "401" in refused.stderr and "export ANIMLLM_API_KEY" in refused.stderr, refused.stderr
        assert running.thread.is_alive() and running.gateway.pool.model == "a"
        monkeypatch.setenv("ANIMLLM_API_KEY", "k-123")
        assert run_cli("status").exit_code == 0
        assert run_cli("switch", "b").exit_code == 0 and running.gateway.pool.model == "b"
    finally:
        running.stop()

"""`animllm switch` and `status` against a running gateway over fake engines: what goes to
stdout, what to stderr, and what `-q` silences."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.gateways import fake_gateway_config, start_gateway
from tests.support.helpers import run_cli


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
    quiet = run_cli("-q", "switch", "b", "--no-pull", env=env)  # the fake's source is no repo: pull would warn
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
    assert "waiting for        b: 1 (oldest 0s)" in result.stdout
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


SECRET = "some-secret-value"


@pytest.fixture
def remote_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A gateway with `a` loaded and `r` served elsewhere: by a fake vLLM that asks a key,
    and by a URL where nothing listens."""
    from tests.support.gateways import remote_fake_vllm
    from tests.support.helpers import free_port
    from tests.support.waiting import wait_until

    monkeypatch.setenv("SOMEVAR", SECRET)
    dead = f"http://127.0.0.1:{free_port()}"
    with remote_fake_vllm(tmp_path, served_name="remote-name", key=SECRET) as (url, _process):
        upstream = {"urls": [f"{url}/v1", dead], "model": "remote-name", "api_key_env": "SOMEVAR",
                    "health_interval_s": 0.2}
        config = fake_gateway_config(tmp_path, extra_models={"r": {"upstream": upstream, "tasks": ["remote"]}})
        monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
        running = start_gateway(tmp_path, config)
        remote = running.gateway.upstreams.get("r")
        wait_until(lambda: all(u.healthy is not None for u in remote.upstreams), 30, "the first health checks")
        yield running, url, dead
        running.stop()


def words(text: str) -> str:
    """Rich folds lines at 80 columns: compare the words, not the layout."""
    return " ".join(text.split())


def test_ps_and_status_show_a_remote_model_and_its_urls_health(remote_gateway) -> None:
    _running, url, dead = remote_gateway
    ps = run_cli("ps")
    assert ps.exit_code == 0, ps.stderr
    shown = words(ps.stdout)
    assert shown.startswith("Resident and remote models") and "r remote - - - - 0/0" in shown
    assert f"r: {url} healthy" in shown
    assert f"r: {dead} out: unreachable:" in shown
    status = run_cli("status")
    assert status.exit_code == 0, status.stderr
    assert "remote r (as 'remote-name' there): 1/2 URLs healthy" in words(status.stdout)
    assert f"r: {url} healthy" in words(status.stdout)  # and the ps table under it


def test_the_json_names_the_remote_servers_key_variable_never_the_key(remote_gateway) -> None:
    import json

    _running, url, dead = remote_gateway
    outputs = [run_cli(*command) for command in (["ps", "--json"], ["ps"], ["status"], ["status", "--json"],
                                                 ["switch", "r"], ["switch", "r", "--json"], ["unload", "r"])]
    assert all(SECRET not in result.stdout + result.stderr for result in outputs)
    (remote,) = json.loads(outputs[0].stdout)["remotes"]
    assert (remote["model"], remote["served_name"], remote["key_env"]) == ("r", "remote-name", "SOMEVAR")
    assert [(u["url"], u["healthy"]) for u in remote["upstreams"]] == [(url, True), (dead, False)]
    assert [e["model"] for e in json.loads(outputs[0].stdout)["engines"]] == ["a"]
    assert [r["model"] for r in json.loads(outputs[3].stdout)["remotes"]] == ["r"]


def test_switch_unload_and_logs_of_a_remote_model(remote_gateway) -> None:
    import json

    running, url, _dead = remote_gateway
    switched = run_cli("switch", "r")
    assert switched.exit_code == 0, switched.stderr
    assert f"'r' is served by {url}" in switched.stdout and "nothing to load here" in switched.stdout
    assert "loading" not in switched.stderr  # nothing is loaded: the wait is not worded as a load
    report = json.loads(run_cli("switch", "r", "--json").stdout)
    assert (report["outcome"], report["to_model"], report["from_model"]) == ("remote", "r", None)
    assert [s.to_model for s in running.gateway.pool.switches] == ["a"]  # only the first load
    unloaded = run_cli("unload", "r")
    assert unloaded.exit_code == 1 and "409" in unloaded.stderr and "served elsewhere" in unloaded.stderr
    logs = run_cli("logs", "--model", "r")
    assert logs.exit_code == 2 and "its log is on that server" in words(logs.stderr)


def test_bench_measures_a_remote_model_but_refuses_to_switch_to_it(remote_gateway) -> None:
    import json

    running, _url, _dead = remote_gateway
    refused = run_cli("bench", "--switch", "a,r", "-n", "1")
    assert refused.exit_code == 2
    assert "bench --switch measures loads; 'r' is served elsewhere" in words(refused.stderr)
    assert running.requests_seen() == [] and [s.to_model for s in running.gateway.pool.switches] == ["a"]
    measured = run_cli("bench", "r", "-n", "2", "--warmup", "0", "--input-len", "8", "--output-len", "4",
                       "--json")
    assert measured.exit_code == 0, measured.stderr
    assert json.loads(measured.stdout)["levels"][0]["summary"]["completed"] == 2
    assert running.requests_seen() == []  # the local engine saw none of them: the remote served them
    checked = run_cli("bench", "r", "--check", "-n", "1")  # expectations are per profile: r has none
    assert checked.exit_code == 2 and "'r' is served elsewhere and has no profile" in words(checked.stderr)

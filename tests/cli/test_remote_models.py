"""Models served elsewhere (`upstream:`) in the commands that read the config: `models`,
`plan`, `config show`, and the config errors and seed variables that meet them. No key's
value is ever printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.helpers import free_port, run_cli, run_json, write

KEY = "sk-far-31d9a7"
URLS = ["https://gpu-box.example:8443/v1", "http://10.0.0.5"]


@pytest.fixture
def remote(isolated_env: Path) -> Path:
    """The shipped models plus `far`, served by two servers, as ./animllm.yaml."""
    return write(isolated_env / "animllm.yaml", f"""
        models:
          far:
            upstream: {{urls: {json.dumps(URLS)}, model: llama-70b, api_key_env: FAR_KEY}}
            tasks: [chat]
            aliases: [faraway]
            concurrency: 4
    """)


def test_models_table_says_where_each_model_runs(remote) -> None:
    result = run_cli("models")
    assert result.exit_code == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[3:] if line.strip()}
    assert result.stdout.splitlines()[1].split() == ["name", "tasks", "aliases", "source", "profile", "quant",
                                                     "context"]
    assert rows["vision"][5:7] == ["Qwen2.5-VL-7B-Instruct-AWQ", "small"] and rows["*"][1:3] == ["coder", "code"]
    # the servers in place of a source (http's port when none is given); no profile, quant or context
    assert rows["far"][1:] == ["chat", "faraway", "remote:", "gpu-box.example:8443,", "10.0.0.5:80", "-", "-", "-"]


def test_models_json_has_the_upstream(remote) -> None:
    data = run_json("models", "--json", env={"FAR_KEY": KEY})
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name["far"]["upstream"] == {"urls": ["https://gpu-box.example:8443", "http://10.0.0.5"],
                                          "model": "llama-70b", "api_key_env": "FAR_KEY"}
    assert by_name["far"]["source"] is None and by_name["far"]["concurrency"] == 4
    assert by_name["coder"]["upstream"] is None
    assert KEY not in json.dumps(data)


def test_plan_gives_a_remote_model_no_vram(remote) -> None:
    result = run_cli("plan", "--vram", "16")
    assert result.exit_code == 0, result.stderr
    assert "remote: served by https://gpu-box.example:8443, http://10.0.0.5, no VRAM here" in result.stdout
    data = run_json("plan", "--vram", "16", "--json")
    assert data["remote"] == [{"model": "far", "urls": ["https://gpu-box.example:8443", "http://10.0.0.5"]}]
    assert "far" not in {m["model"] for m in data["models"]} and "far" not in data["shares"]
    assert all("far" not in group for group in data["co_resident"])


def test_plan_of_a_remote_model_says_so(remote) -> None:
    result = run_cli("plan", "faraway", "--vram", "16")
    assert result.exit_code == 0, result.stderr
    assert "far" in result.stdout and "no VRAM here" in result.stdout and "VRAM plan" not in result.stdout
    data = run_json("plan", "far", "--vram", "16", "--json")
    assert data["models"] == [] and data["remote"][0]["model"] == "far"


def test_plan_together_refuses_a_remote_model(remote) -> None:
    result = run_cli("plan", "--together", "coder,far", "--vram", "16")
    assert result.exit_code == 2 and result.stdout == ""
    assert "far is served elsewhere" in result.stderr and "no VRAM here" in result.stderr


def test_config_show_of_a_remote_model_shows_its_upstream_and_no_engine(remote) -> None:
    import yaml

    shown = run_cli("config", "show", "far", env={"FAR_KEY": KEY})
    assert shown.exit_code == 0, shown.stderr
    data = yaml.safe_load(shown.stdout)
    assert "engine" not in data and "argv" not in shown.stdout
    upstream = data["upstream"]
    assert upstream["urls"] == ["https://gpu-box.example:8443", "http://10.0.0.5"]
    assert (upstream["model"], upstream["api_key_env"], upstream["api_key"]) == ("llama-70b", "FAR_KEY", "set")
    assert data["settings"] == {"concurrency": 4}
    assert KEY not in shown.stdout + shown.stderr
    assert run_json("config", "show", "faraway", "--json")["upstream"]["api_key"] == "not set"


@pytest.mark.parametrize("fmt", ["args", "env"])
def test_config_show_args_or_env_of_a_remote_model_is_a_usage_error(remote, fmt) -> None:
    result = run_cli("config", "show", "far", "--format", fmt)
    assert result.exit_code == 2 and result.stdout == ""
    assert "'far' is served elsewhere" in result.stderr and "no engine here" in result.stderr


def test_config_show_explain_of_a_remote_model(remote) -> None:
    data = run_json("config", "show", "far", "--explain", "--format", "json", env={"FAR_KEY": KEY})
    rows = {row["key"]: row for row in data["values"]}
    assert rows["upstream.urls"]["source"]["text"] == f"{remote.resolve()}:3"
    assert rows["upstream.verify_tls"]["source"]["kind"] == "builtin"
    assert rows["upstream.api_key"]["value"] == "set" and rows["upstream.api_key"]["source"]["text"] == "env FAR_KEY"
    assert rows["concurrency"]["value"] == 4
    table = run_cli("config", "show", "far", "--explain", env={"FAR_KEY": KEY})
    assert table.exit_code == 0 and "upstream.model" in table.stdout and KEY not in table.stdout


def test_the_whole_config_names_the_key_variable_only(remote) -> None:
    for args in (("config", "show"), ("config", "show", "--json"), ("config", "show", "--explain")):
        result = run_cli(*args, env={"FAR_KEY": KEY})
        assert result.exit_code == 0, result.stderr
        assert KEY not in result.stdout + result.stderr and "FAR_KEY" in result.stdout


def test_a_remote_models_profile_gives_it_gateway_keys_only(isolated_env) -> None:
    write(isolated_env / "animllm.yaml", "models: {far: {upstream: {urls: 'http://10.0.0.5'}, profile: small}}\n")
    assert run_json("config", "show", "far", "--json")["settings"] == {"concurrency": 10}
    far = next(m for m in run_json("models", "--json")["models"] if m["name"] == "far")
    assert far["gpu_memory_utilization"] is None and far["max_model_len"] is None and far["profile"] == "small"


def test_the_seed_variables_leave_a_remote_model_alone(remote) -> None:
    env = {"GPU_MEMORY_UTILIZATION": "0.8", "MAX_NUM_SEQS": "16"}
    models = {m["name"]: m for m in run_json("models", "--json", env=env)["models"]}
    assert models["coder"]["gpu_memory_utilization"] == 0.8 and models["far"]["gpu_memory_utilization"] is None
    assert run_json("config", "show", "far", "--json", env=env)["settings"] == {"concurrency": 4}
    assert run_cli("plan", "--vram", "16", env=env).exit_code in (0, 1)  # planned, not a config error
    assert run_cli("plan", "--vram", "16", "--gpu-memory-utilization", "0.8").exit_code in (0, 1)


@pytest.mark.parametrize(("model", "fragments"), [
    ("{upstream: {urls: 'http://10.0.0.5'}, max_model_len: 4096}",
     ["bad.yaml:1", "models.far.max_model_len", "does not apply to a remote model"]),
    ("{upstream: {urls: 'http://10.0.0.5'}, source: org/far, profile: small}",
     ["bad.yaml:1", "models.far.upstream", "not both"]),
    ("{upstream: {urls: 'http://10.0.0.5', bogus: 1}}",
     ["bad.yaml:1", "models.far.upstream.bogus", "unknown key", "api_key_env"]),
    ("{upstream: {urls: []}}", ["models.far.upstream.urls"]),
])
def test_config_errors_of_a_remote_model(tmp_path, model, fragments) -> None:
    bad = write(tmp_path / "bad.yaml", f"models: {{far: {model}}}\n")
    result = run_cli("models", "--config", str(bad))
    assert result.exit_code == 2 and result.stdout == ""
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def test_a_url_with_credentials_is_refused_without_echoing_them(tmp_path) -> None:
    bad = write(tmp_path / "bad.yaml", "models: {far: {upstream: {urls: 'https://me:hunter2pw@gpu-box.lan/v1'}}}\n")
    for args in (("models",), ("config", "show", "far"), ("doctor", "--only", "upstreams")):
        result = run_cli(*args, "--config", str(bad))
        assert result.exit_code == 2 and "models.far.upstream.urls" in result.stderr
        assert "credentials" in result.stderr and "hunter2pw" not in result.stdout + result.stderr


def test_serve_refuses_a_ca_bundle_it_cannot_read_naming_the_key(tmp_path) -> None:
    config = write(tmp_path / "bad-ca.yaml", """
        inherit_defaults: false
        models: {far: {upstream: {urls: 'https://gpu-box.example', ca_bundle: no-such-ca.pem}}}
    """)
    result = run_cli("--config", str(config), "serve", "far", "--port", str(free_port()))
    assert result.exit_code == 2
    assert "models.far.upstream.ca_bundle" in result.stderr and "no-such-ca.pem" in result.stderr

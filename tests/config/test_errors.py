"""Bad input is exit 2 with one message that names the file (and line), the key path,
the bad value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.helpers import run_cli, write

CASES = {
    "unknown key": (
        "models:\n  coder:\n    max_model_lenn: 4096\n",
        ["bad.yaml:3", "models.coder.max_model_lenn", "unknown key", "allowed keys:", "max_model_len"]),
    "unknown section": (
        "serverr:\n  port: 1\n",
        ["bad.yaml:1", "serverr", "unknown key", "server"]),
    "wrong type": (
        "server:\n  port: eighty\n",
        ["bad.yaml:2", "server.port", "valid integer", "'eighty'"]),
    "utilisation above 1": (
        "profiles:\n  small:\n    gpu_memory_utilization: 1.5\n",
        ["bad.yaml:3", "profiles.small.gpu_memory_utilization", "less than or equal to 1", "1.5"]),
    "utilisation zero": (
        "models:\n  coder:\n    gpu_memory_utilization: 0\n",
        ["bad.yaml:3", "models.coder.gpu_memory_utilization", "greater than 0", "got 0"]),
    "missing profile": (
        "models:\n  coder:\n    profile: medium\n",
        ["bad.yaml:3", "models.coder.profile", "'medium'", "defined profiles: large, small"]),
    "alias claimed twice": (
        "models:\n  vision:\n    aliases: [qwen-coder]\n",
        ["bad.yaml:3", "models.vision.aliases", "'qwen-coder'", "already claimed by model 'coder'"]),
    "alias equal to another model's name": (
        "models:\n  vision:\n    aliases: [coder]\n",
        ["bad.yaml:3", "models.vision.aliases", "'coder'", "already claimed by model 'coder'"]),
    "malformed yaml": (
        "models:\n  coder: {max_model_len: 4096\nserver: {}\n",
        ["bad.yaml:3", "malformed YAML"]),
    "duplicate key": (
        "server:\n  port: 8000\n  port: 9000\n",
        ["bad.yaml:3", "server.port", "duplicate key", "line 2"]),
    "top level not a mapping": (
        "- coder\n",
        ["bad.yaml:1", "must be a mapping"]),
    "model without source": (
        "models:\n  newmodel:\n    profile: small\n",
        ["bad.yaml:2", "models.newmodel.source", "required key is missing"]),
    "bad model name": (
        "models:\n  'bad name':\n    source: org/x\n    profile: small\n",
        ["bad.yaml:2", "models.bad name", "invalid name"]),
    "boolean env value": (
        "env:\n  XFORMERS_DISABLED: yes\n",
        ["bad.yaml:2", "env.XFORMERS_DISABLED", "boolean", "quotes"]),
    "extra arg that animllm owns": (
        "models:\n  coder:\n    extra_args: {port: 9999}\n",
        ["bad.yaml:3", "models.coder.extra_args.port", "--port is set by animllm"]),
    "default model unknown": (
        "default_model: nobody\n",
        ["bad.yaml:1", "default_model", "'nobody'"]),
    "inherit_defaults not a boolean": (
        "inherit_defaults: maybe\n",
        ["bad.yaml:1", "inherit_defaults", "'maybe'"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_file_is_exit_2_with_a_precise_message(case: str, tmp_path: Path) -> None:
    text, expected = CASES[case]
    config = write(tmp_path / "bad.yaml", text)
    result = run_cli("models", "--config", str(config))
    assert result.exit_code == 2, result.stdout
    assert result.stdout == ""
    assert str(config.parent) in result.stderr
    for fragment in expected:
        assert fragment in result.stderr, f"{fragment!r} not in:\n{result.stderr}"


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("--config", str(tmp_path / "nope.yaml"), "models")
    assert result.exit_code == 2
    assert f"{tmp_path / 'nope.yaml'}: config file not found" in result.stderr


def test_missing_config_file_from_environment(tmp_path: Path) -> None:
    result = run_cli("models", env={"ANIMLLM_CONFIG": str(tmp_path / "gone.yaml")})
    assert result.exit_code == 2 and "gone.yaml: config file not found" in result.stderr


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    result = run_cli("models", "--config", str(tmp_path))
    assert result.exit_code == 2 and "is a directory" in result.stderr


@pytest.mark.parametrize(("env", "expected"), [
    ({"GPU_MEMORY_UTILIZATION": "1.2"}, ["env GPU_MEMORY_UTILIZATION", "models.*.gpu_memory_utilization", "1.2"]),
    ({"ANIMLLM_SERVER__PORT": "http"}, ["env ANIMLLM_SERVER__PORT", "server.port", "'http'"]),
    ({"ANIMLLM_SERVR__PORT": "1"}, ["env ANIMLLM_SERVR__PORT", "servr", "unknown key"]),
    ({"ANIMLLM_SERVER____PORT": "1"}, ["env ANIMLLM_SERVER____PORT", "empty key"]),
])
def test_bad_environment_override(env: dict[str, str], expected: list[str]) -> None:
    result = run_cli("models", env=env)
    assert result.exit_code == 2
    for fragment in expected:
        assert fragment in result.stderr, result.stderr


def test_bad_flag_value_names_the_flag() -> None:
    result = run_cli("config", "show", "coder", "--gpu-memory-utilization", "1.5", "--format", "args")
    assert result.exit_code == 2
    assert "flag --gpu-memory-utilization 1.5: models.coder.gpu_memory_utilization" in result.stderr


def test_malformed_set_flag() -> None:
    result = run_cli("config", "show", "--set", "server.port")
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.stderr


def test_unknown_model_lists_the_configured_ones() -> None:
    result = run_cli("config", "show", "nosuch")
    assert result.exit_code == 2
    assert "unknown model 'nosuch'" in result.stderr and "coder (qwen-coder" in result.stderr


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    config = write(tmp_path / "bad.yaml", "server: {port: 0}\nlimits: {vram_threshold: 2}\n")
    result = run_cli("models", "--config", str(config))
    assert result.exit_code == 2
    assert "bad.yaml:1: server.port" in result.stderr and "bad.yaml:2: limits.vram_threshold" in result.stderr

"""The commands as a user sees them: data on stdout, messages on stderr, exit codes."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from animllm_cli import __version__
from tests.support.helpers import run_cli, run_json, write


def test_version() -> None:
    result = run_cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"animllm {__version__}"


def test_no_arguments_shows_help() -> None:
    result = run_cli()
    assert "models" in result.stdout + result.stderr and "config" in result.stdout + result.stderr


def test_models_table_lists_every_shipped_model() -> None:
    result = run_cli("models")
    assert result.exit_code == 0
    # the repo's name alone: its org (Qwen) is the only one with a repo of that name here
    for name in ("vision", "reasoning", "* coder", "qwen72b", "Qwen2.5-VL-7B-Instruct-AWQ", "awq_marlin"):
        assert name in result.stdout
    assert "\x1b[" not in result.stdout  # NO_COLOR and not a terminal: plain text


def test_models_json_schema() -> None:
    data = run_json("models", "--json")
    assert data["schema_version"] == 1 and data["default_model"] == "coder"
    coder = next(m for m in data["models"] if m["name"] == "coder")
    assert coder == {
        "name": "coder", "default": True, "tasks": ["code"], "aliases": ["qwen-coder", "qwen2.5-coder-7b"],
        "source": "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "engine_source": "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ",
        "profile": "small", "quantization": "awq_marlin", "kv_cache_dtype": None, "max_model_len": 32768,
        "gpu_memory_utilization": 0.85, "concurrency": 10, "description": None, "upstream": None,
    }
    assert {m["name"] for m in data["models"]} == {"vision", "reasoning", "coder", "qwen72b"}


def test_config_accepted_before_or_after_the_command(tmp_path: Path) -> None:
    first = write(tmp_path / "a.yaml", "models: {coder: {max_model_len: 1111}}\n")
    second = write(tmp_path / "b.yaml", "models: {coder: {max_model_len: 2222}}\n")
    before = run_json("--config", str(first), "models", "--json")
    after = run_json("models", "--json", "--config", str(second))
    both = run_json("--config", str(first), "models", "--json", "--config", str(second))
    lens = [next(m for m in d["models"] if m["name"] == "coder")["max_model_len"] for d in (before, after, both)]
    assert lens == [1111, 2222, 2222]


def test_config_show_args_is_one_runnable_line() -> None:
    result = run_cli("config", "show", "qwen-coder", "--format", "args", "--port", "8555")
    assert result.exit_code == 0
    assert result.stdout.count("\n") == 1
    words = shlex.split(result.stdout)
    assert "--port" in words and words[words.index("--port") + 1] == "8555"
    assert "-m" in words and "vllm.entrypoints.openai.api_server" in words


def test_config_show_args_defaults_to_the_default_model() -> None:
    result = run_cli("config", "show", "--format", "args")
    assert "--served-model-name coder " in result.stdout


def test_config_show_env_masks_secrets(isolated_env: Path) -> None:
    write(isolated_env / "animllm.yaml", "env: {HF_TOKEN: hf_zzz}\n")
    result = run_cli("config", "show", "coder", "--format", "env")
    assert "hf_zzz" not in result.stdout
    assert "# HF_TOKEN is set (secret, not shown)" in result.stdout
    assert "XFORMERS_DISABLED=1" in result.stdout.splitlines()


def test_config_show_yaml_and_json_agree() -> None:
    import yaml

    as_yaml = yaml.safe_load(run_cli("config", "show").stdout)
    as_json = run_json("config", "show", "--format", "json")
    assert as_yaml == as_json
    assert as_json["server"] == {"host": "127.0.0.1", "port": 8000, "api_key_env": "ANIMLLM_API_KEY",
                                 "switch_on_demand": True}


def test_config_show_model_json_has_engine_argv() -> None:
    data = run_json("config", "show", "reasoning", "--json")
    assert data["name"] == "reasoning" and data["profile"] == "large"
    assert data["settings"]["max_model_len"] == 16384
    assert "--max-model-len" in data["engine"]["argv"]


def test_explain_names_each_layer(isolated_env: Path) -> None:
    write(isolated_env / "animllm.yaml", "models:\n  coder:\n    max_num_seqs: 9\n")
    data = run_json("config", "show", "coder", "--explain", "--format", "json",
                    "--set", "models.coder.dtype=bfloat16", "--max-model-len", "2048",
                    env={"GPU_MEMORY_UTILIZATION": "0.8"})
    sources = {row["key"]: row["source"]["text"] for row in data["values"]}
    assert sources["max_num_seqs"] == f"{(isolated_env / 'animllm.yaml').resolve()}:3"
    assert sources["gpu_memory_utilization"] == "env GPU_MEMORY_UTILIZATION"
    assert sources["dtype"] == "flag --set models.coder.dtype=bfloat16"
    assert sources["max_model_len"] == "flag --max-model-len 2048"
    assert sources["max_num_batched_tokens"].startswith("shipped default animllm.yaml:")


def test_explain_whole_config_table() -> None:
    result = run_cli("config", "show", "--explain")
    assert result.exit_code == 0
    assert "server.port" in result.stdout and "built-in default" in result.stdout
    assert "shipped default animllm.yaml:" in result.stdout


def test_errors_go_to_stderr_with_exit_2() -> None:
    result = run_cli("config", "show", "--format", "toml")
    assert result.exit_code == 2 and result.stdout == ""


def test_json_output_is_valid_for_scripts() -> None:
    result = run_cli("-q", "models", "--json")
    json.loads(result.stdout)
    assert result.stderr == ""

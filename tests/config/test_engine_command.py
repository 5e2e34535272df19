"""The engine command: every setting as its vLLM flag, the served names, the environment."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from animllm_cli.config import load_config
from animllm_cli.engine.command import build_engine_command, flag_args
from tests.support.helpers import write


def _command(config: Path | None = None, model: str = "coder", **kwargs):
    loaded = load_config(config)
    return build_engine_command(loaded, loaded.model(model), **kwargs)


def _flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_flag_spelling() -> None:
    assert flag_args("max_model_len", 4096) == ["--max-model-len", "4096"]
    assert flag_args("enforce_eager", True) == ["--enforce-eager"]
    assert flag_args("enable_prefix_caching", False) == ["--no-enable-prefix-caching"]
    assert flag_args("limit_mm_per_prompt", {"image": 4}) == ["--limit-mm-per-prompt", '{"image":4}']
    assert flag_args("cpu_offload_gb", 28.0) == ["--cpu-offload-gb", "28"]
    assert flag_args("gpu_memory_utilization", 0.85) == ["--gpu-memory-utilization", "0.85"]
    assert flag_args("--tool-call-parser", "hermes") == ["--tool-call-parser", "hermes"]
    assert flag_args("seed", None) == []


def test_command_head_names_model_served_names_host_and_port() -> None:
    argv = _command(port=8123).argv
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert _flag_value(argv, "--model") == "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
    start = argv.index("--served-model-name") + 1
    assert argv[start:start + 3] == ["coder", "qwen-coder", "qwen2.5-coder-7b"]
    assert _flag_value(argv, "--host") == "127.0.0.1"
    assert _flag_value(argv, "--port") == "8123"


def test_every_set_profile_and_model_setting_becomes_a_flag() -> None:
    argv = _command(model="vision").argv
    assert _flag_value(argv, "--gpu-memory-utilization") == "0.85"      # from the profile
    assert _flag_value(argv, "--max-model-len") == "16384"             # the model's own beats the profile's
    assert _flag_value(argv, "--max-num-batched-tokens") == "8192"
    assert _flag_value(argv, "--max-num-seqs") == "256"
    assert _flag_value(argv, "--quantization") == "awq_marlin"
    assert _flag_value(argv, "--limit-mm-per-prompt") == '{"image":4}'
    assert "--enable-prefix-caching" in argv
    assert not any(a.startswith("--concurrency") for a in argv)       # a gateway limit, not a vLLM flag


def test_extra_args_pass_through_after_the_settings(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", """
        models:
          coder:
            extra_args: {enable-auto-tool-choice: true, tool_call_parser: hermes, disable-log-stats: false}
    """)
    argv = _command(config, vllm_version="99.0.0").argv     # newer than the tables: spelt as written
    tail = argv[argv.index("--enable-prefix-caching") + 1:]
    assert tail == ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--no-disable-log-stats"]
    # 0.32 has --disable-log-stats only, and false is its default: nothing to say (vLLM refuses --no-...).
    argv = _command(config, vllm_version="0.32.0").argv
    assert argv[argv.index("--enable-prefix-caching") + 1:] == ["--enable-auto-tool-choice", "--tool-call-parser",
                                                                  "hermes"]


def test_engine_python_is_configurable(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "engine: {python: /opt/conda/envs/vllm/bin/python}\n")
    assert _command(config).argv[0] == "/opt/conda/envs/vllm/bin/python"
    relative = write(tmp_path / "d.yaml", "engine: {python: ./venv/bin/python}\n")
    assert _command(relative).argv[0] == str(tmp_path / "venv" / "bin" / "python")


def test_environment_has_paths_and_env_section() -> None:
    env = _command().env
    assert env["HF_HOME"] == str(Path("~/.cache/huggingface").expanduser())
    assert env["VLLM_CACHE_ROOT"] == str(Path("~/.cache/vllm").expanduser())
    assert env["TORCH_HOME"] == str(Path("~/.cache/torch").expanduser())
    assert env["XFORMERS_DISABLED"] == "1"
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512,expandable_segments:True"


def test_shell_line_round_trips_and_never_shows_secrets(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "env: {HF_TOKEN: hf_abc123, WEIRD: \"a b'c\"}\n")
    command = _command(config)
    line = command.shell_line()
    assert "hf_abc123" not in line
    assert 'HF_TOKEN="$HF_TOKEN"' in line
    words = shlex.split(line)
    assignments = [w for w in words if "=" in w and not w.startswith("-")][: len(command.env)]
    assert "WEIRD=a b'c" in assignments
    assert words[len(command.env):] == command.argv
    assert command.display_env()["HF_TOKEN"] == "***"


def test_engine_environment_never_carries_the_gateways_key(tmp_path: Path, monkeypatch) -> None:
    """The gateway's key (server.api_key_env, here a custom name) and any other ANIMLLM_*
    secret stay out of the engine's environment, whether inherited, in `env:` or in `.env`;
    the engine's own per-launch key and ordinary variables pass."""
    config = write(tmp_path / "c.yaml", "server: {api_key_env: MY_GATEWAY_KEY}\n"
                                        "env: {MY_GATEWAY_KEY: from-config, HF_TOKEN: hf_abc}\n")
    write(tmp_path / ".env", "ANIMLLM_API_KEY=from-dotenv\nKEEP_ME=1\n")
    command = _command(config, api_key="engine-own-key")
    inherited = {"MY_GATEWAY_KEY": "gw-secret", "ANIMLLM_API_KEY": "default-secret",
                 "ANIMLLM_UPSTREAM_TOKEN": "other-secret", "ANIMLLM_STATE_DIR": "/tmp/s", "PATH": "/usr/bin"}
    env = command.full_env(inherited)
    assert not {"MY_GATEWAY_KEY", "ANIMLLM_API_KEY", "ANIMLLM_UPSTREAM_TOKEN"} & set(env), env
    assert "MY_GATEWAY_KEY" not in command.env and "ANIMLLM_API_KEY" not in command.env
    assert env["VLLM_API_KEY"] == "engine-own-key" and env["HF_TOKEN"] == "hf_abc" and env["KEEP_ME"] == "1"
    assert env["ANIMLLM_STATE_DIR"] == "/tmp/s" and env["PATH"] == "/usr/bin"
    monkeypatch.setenv("MY_GATEWAY_KEY", "from-os-environ")
    assert "MY_GATEWAY_KEY" not in command.full_env()       # the default base is os.environ

"""Shared test helpers: the CLI runner, config writers, and free ports."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from animllm_cli.engine.supervisor import free_port  # noqa: F401  (the tests' free port, the same as the engine's)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO_ROOT / "configs" / "animllm.yaml"
EXAMPLE_CONFIGS = sorted((REPO_ROOT / "configs" / "examples").glob("*.yaml"))


def run_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None):
    """Invoke the real Typer app in-process; stdout and stderr are kept apart."""
    from animllm_cli.cli import app

    return CliRunner().invoke(app, list(args), env=env, input=input, catch_exceptions=False)


def run_json(*args: str, env: dict[str, str] | None = None) -> Any:
    result = run_cli(*args, env=env)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def tiny_config(path: Path, models: dict[str, Path], *, port: int = 8100) -> Path:
    """A standalone config serving the tiny models on the CPU build of vLLM."""
    entries = "".join(
        f"  {name}: {{source: {src}, profile: tiny, tasks: [chat], aliases: [{name}-alias]}}\n"
        for name, src in models.items())
    header = f"""
        inherit_defaults: false
        engine: {{port: {port}}}
        env:
          VLLM_CPU_KVCACHE_SPACE: "1"    # GiB of CPU memory for the KV cache
        profiles:
          tiny:
            gpu_memory_utilization: 0.3  # on CPU: a fraction of the NUMA node's memory
            max_model_len: 512
            max_num_seqs: 8
            enforce_eager: true          # halves the start time on CPU
            dtype: bfloat16
        default_model: {next(iter(models))}
        models:
    """
    return write(path, textwrap.dedent(header).lstrip() + entries)

"""The shell completion scripts are current, and bash completes commands and model names
(from the user's own config) through them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import REPO_ROOT, write

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from gen_completions import FILES, scripts  # noqa: E402

BASH = shutil.which("bash")


def test_committed_scripts_are_current() -> None:
    for shell, text in scripts().items():
        committed = (REPO_ROOT / "completions" / FILES[shell]).read_text()
        assert committed == text, f"completions/{FILES[shell]} is stale: run scripts/gen_completions.py"


def _bash_complete(words: list[str], env: dict[str, str]) -> list[str]:
    script = (f"source {REPO_ROOT / 'completions' / FILES['bash']}; COMP_WORDS=({' '.join(words)}); "
              f"COMP_CWORD={len(words) - 1}; _animllm_completion animllm; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run([BASH, "-c", script], capture_output=True, text=True, timeout=60, env={**env, "PATH": path})
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_bash_completes_a_subcommand() -> None:
    assert _bash_complete(["animllm", "sw"], dict(os.environ)) == ["switch"]
    assert set(_bash_complete(["animllm", "s"], dict(os.environ))) >= {"serve", "switch", "status", "stop"}


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_bash_completes_model_names_from_the_users_config(tmp_path: Path) -> None:
    config = write(tmp_path / "mine.yaml", "models: {storyboard: {source: org/sb, profile: small, aliases: [sb-fast]}}\n")
    env = {**os.environ, "ANIMLLM_CONFIG": str(config)}
    assert _bash_complete(["animllm", "serve", "sto"], env) == ["storyboard"]
    assert _bash_complete(["animllm", "chat", "sb"], env) == ["sb-fast"]
    assert "coder" in _bash_complete(["animllm", "switch", "co"], env)

"""`serve` spells every model's engine command for the installed vLLM before anything
starts: a flag that release lacks fails the model being started (exit 2, nothing
launched) and is a warning for the others."""

from __future__ import annotations

import sys

import pytest

from animllm_cli.cli.serve import _check_engine_commands
from animllm_cli.config import load_config
from animllm_cli.engine import python_env
from animllm_cli.errors import ConfigError
from tests.support.helpers import run_cli, write

LATER_FLAG = "enable-log-requests"   # first in 0.10.1 (the tables); 0.9.0 has only --disable-log-requests


@pytest.fixture
def vllm_0_9(monkeypatch: pytest.MonkeyPatch) -> None:
    env = python_env.PythonEnv(sys.executable, packages={"torch": "2.7.0+cu128", "vllm": "0.9.0"})
    monkeypatch.setattr(python_env, "probe_python", lambda executable, extra=None: env)


class _Out:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def test_serve_refuses_before_starting_a_model_whose_flag_the_installed_release_lacks(vllm_0_9, tmp_path) -> None:
    config = write(tmp_path / "c.yaml", f"models:\n  coder:\n    extra_args: {{{LATER_FLAG}: true}}\n")
    # A public bind without a key would be refused next (exit 2 too): nothing can start even if this check fell away.
    result = run_cli("serve", "coder", "--no-pull", "--host", "203.0.113.1", "--config", str(config))
    assert result.exit_code == 2, result.output
    assert f"models.coder.extra_args.{LATER_FLAG}: vLLM 0.9.0 has no --{LATER_FLAG} (first in 0.10.1)" \
        in result.stderr
    assert "gateway on" not in result.output and "API key" not in result.stderr


def test_the_other_models_are_a_warning(vllm_0_9, tmp_path) -> None:
    config = write(tmp_path / "c.yaml", f"models:\n  vision:\n    extra_args: {{{LATER_FLAG}: true}}\n")
    loaded = load_config(config)
    out = _Out()
    _check_engine_commands(out, loaded, ["coder"])
    assert out.warnings == [f"switching to vision will fail: models.vision.extra_args.{LATER_FLAG}: vLLM 0.9.0 has no "
                            f"--{LATER_FLAG} (first in 0.10.1) (set in {config}:3)"]
    with pytest.raises(ConfigError):
        _check_engine_commands(out, loaded, ["coder", "vision"])

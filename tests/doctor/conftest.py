"""The doctor's fixtures: a fake NVML as `pynvml`, and what the engine's Python is said to have."""

from __future__ import annotations

import sys

import pytest

from animllm_cli.engine import python_env
from animllm_cli.engine.python_env import PythonEnv
from tests.fakes.nvml import FakeNvml

GOOD_ENV = dict(python="3.11.7", packages={"torch": "2.7.0+cu128", "vllm": "0.10.0"},
                requires={"vllm": ["torch==2.7.0"], "torch": []})


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


@pytest.fixture
def engine_env(monkeypatch: pytest.MonkeyPatch):
    """Set what the engine's environment has installed: engine_env(packages=..., requires=...)."""
    state = {"env": PythonEnv(sys.executable, **GOOD_ENV)}

    def set_env(**fields) -> None:
        state["env"] = PythonEnv(sys.executable, **{**GOOD_ENV, **fields})

    monkeypatch.setattr(python_env, "probe_python", lambda executable, extra=None: state["env"])
    return set_env

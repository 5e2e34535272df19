"""The environment every test runs in: its own config/state/cache dirs, no animllm
overrides from the developer's shell, NO_COLOR and a fixed width."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Variables that would leak the developer's own setup into a test.
LEAKY = ("ANIMLLM_", "GPU_MEMORY_UTILIZATION", "MAX_NUM_BATCHED_TOKENS", "MAX_NUM_SEQS")


def isolate(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Give the process that environment, with its dirs under `home`."""
    for var in list(os.environ):
        if var.startswith(LEAKY):
            monkeypatch.delenv(var)
    for name in ("config", "state", "cache"):
        (home / name).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(f"ANIMLLM_{name.upper()}_DIR", str(home / name))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")


def require_vllm() -> None:
    """The engine tier runs real vLLM, and `vllm`-marked tests call its own code (the
    benchmark's definitions). Without it: skip on a laptop, fail under CI=true."""
    if importlib.util.find_spec("vllm") is None:
        message = "vLLM is not installed: run `make setup` (installs the CPU build into .venv)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"engine tier under CI=true: {message}")
        pytest.skip(message)

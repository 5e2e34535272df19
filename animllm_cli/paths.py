"""Where animllm keeps its files: the OS conventions, overridable for tests and power users."""

from __future__ import annotations

import os
from pathlib import Path

APP = "animllm"


def _dir(env_var: str, kind: str) -> Path:
    override = os.environ.get(env_var)
    if override:
        return Path(override).expanduser()
    import platformdirs  # imported late: only commands that touch files pay for it

    return Path(getattr(platformdirs, f"user_{kind}_dir")(APP, appauthor=False))


def config_dir() -> Path:
    return _dir("ANIMLLM_CONFIG_DIR", "config")


def state_dir() -> Path:
    return _dir("ANIMLLM_STATE_DIR", "state")


def cache_dir() -> Path:
    return _dir("ANIMLLM_CACHE_DIR", "cache")


def shipped_config() -> Path:
    """The default config that ships inside the package (configs/animllm.yaml in the repo)."""
    return Path(__file__).parent / "configs" / "animllm.yaml"

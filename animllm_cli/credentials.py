"""Secrets: which names hold one, how they are masked for display, and how a key is sent.
A secret's value never reaches a log, a table or a `ps` listing."""

from __future__ import annotations

import re
from typing import Mapping

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL", re.IGNORECASE)
MASK = "***"


def is_secret_name(name: str) -> bool:
    """Environment names whose values must never be printed or logged."""
    return bool(SECRET_NAME.search(name))


def masked(env: Mapping[str, str | None]) -> dict[str, str | None]:
    """`env` with the values of secret names replaced by a mask, for printing."""
    return {name: (MASK if is_secret_name(name) and value is not None else value) for name, value in env.items()}


def bearer(key: str | None) -> dict[str, str]:
    """The Authorization header for `key`, or no header without one."""
    return {"authorization": f"Bearer {key}"} if key else {}

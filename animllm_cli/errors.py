"""Exceptions that the CLI turns into clean messages and exit codes.

Library code raises these; only `cli` decides how they look. Exit codes follow the
command contract: 1 operational failure, 2 usage or configuration error.
"""

from __future__ import annotations


class AnimllmError(Exception):
    """An expected failure with a message fit for the user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(AnimllmError):
    """The user asked for something that cannot be (unknown model, bad flag value)."""

    exit_code = 2


class ConfigError(UsageError):
    """One or more problems in the configuration, each tied to where it came from."""

    def __init__(self, problems: list[str], *, hint: str | None = None) -> None:
        self.problems = problems
        if len(problems) == 1:
            message = f"invalid configuration: {problems[0]}"
        else:
            message = "invalid configuration\n" + "\n".join(f"  {p}" for p in problems)
        super().__init__(message, hint=hint)

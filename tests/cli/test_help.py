"""`--help` as a user reads it at an 80-column terminal: every parameter by a name that
says what to give (never Typer's `<str>`/`<int>` or Click's TEXT/INTEGER), and the command
list with each command's whole summary on one line."""

from __future__ import annotations

import re

import pytest
import typer.main

from animllm_cli.cli import app
from tests.support.helpers import run_cli

TYPE_METAVAR = re.compile(r"<[a-z][\w\[\], |.]*>|\b(?:TEXT|INTEGER|FLOAT|BOOLEAN)\b")


def _command_paths(command=None, path=()) -> list[tuple[str, ...]]:
    command = command or typer.main.get_command(app)
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += _command_paths(sub, (*path, name))
    return found


COMMANDS = _command_paths()


def _help(*path: str) -> str:
    result = run_cli(*path, "--help", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_every_command_is_covered() -> None:
    assert {("bench",), ("doctor",), ("top",), ("config", "show")} <= set(COMMANDS) and len(COMMANDS) > 18


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "animllm")
def test_no_type_metavar_in_help(path: tuple[str, ...]) -> None:
    text = _help(*path)
    assert not TYPE_METAVAR.findall(text), f"type metavars in `{' '.join(path)} --help`:\n{text}"
    assert max(map(len, text.splitlines())) <= 80


def test_the_pattern_sees_what_typer_and_click_print() -> None:
    for shown in ("--seed <int>", "MODEL <str>", "--ports <int range>", "MODELS <list[str]>", "--name TEXT"):
        assert TYPE_METAVAR.search(shown), shown
    for meant in ("--seed N", "--config PATH", "--request-rate R[,R…]", "--only ID[,ID]"):
        assert not TYPE_METAVAR.search(meant), meant


@pytest.mark.parametrize("group", [(), ("config",)], ids=["animllm", "config"])
def test_command_list_gives_each_summary_whole_on_one_line(group: tuple[str, ...]) -> None:
    listed = _help(*group).split("\nCommands:\n", 1)[1].splitlines()
    summaries = {line.split()[0]: line.split(maxsplit=1)[1] for line in listed if line.strip()}
    expected = {path[-1] for path in COMMANDS if path[:-1] == group and path != group}
    assert set(summaries) == expected
    for name, summary in summaries.items():   # not folded onto a second line, not cut with "..."
        assert summary.endswith(".") and not summary.endswith("..."), f"{name}: {summary!r}"

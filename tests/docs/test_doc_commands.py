"""Every code block in README.md and docs/*.md that is a command runs here, or says why not.

A command block is a fenced block in `sh`, `bash`, `shell` or `console`, or any fenced
block with a line that starts with `$ ` (commands and their output). Its commands are its
`$ ` lines where it has any (the rest is output), else every line that is neither blank
nor a comment; a trailing backslash joins the next line.

Each command, `animllm ...` after optional `VAR=value` assignments, runs in-process
through the real Typer app in the isolated environment every test has (its own config,
state and cache dirs, the shipped config), from a working directory that holds the
repo's `configs/` (so `--config configs/examples/...` resolves), with no NVIDIA driver
(the docs' samples come from a machine without one) and 80 columns. It must exit 0, or N
where its line ends with `# exit N`.

A block that cannot run here (it needs a GPU, the network, a running gateway or real
engines, or it stands for a file of the reader's) says so on the line just before its
opening fence:

    <!-- not run: needs a running gateway -->

A command block that neither runs nor carries that marker fails
`test_every_command_block_runs_or_says_why_not`.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from tests.docs.doc_files import DOC_FILES, Block, split
from tests.fakes.nvml import FakeNvml
from tests.support.helpers import REPO_ROOT, run_cli

SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", "<", ">", ">>", "(", ")"}
STATED_EXIT = re.compile(r"\s+#\s*exit\s+(?P<code>\d+)\s*$")
COMMENT = re.compile(r"(^|\s+)#.*$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def is_command_block(block: Block) -> bool:
    return block.language in SHELL_LANGUAGES or any(line.startswith("$ ") for line in block.lines)


def commands(block: Block) -> list[str]:
    """The command lines of a block, continuations joined."""
    prompted = any(line.startswith("$ ") for line in block.lines)
    found: list[str] = []
    pending: str | None = None
    for line in block.lines:
        if pending is not None:
            pending += " " + line.strip()
        elif prompted and line.startswith("$ "):
            pending = line[2:]
        elif not prompted and line.strip() and not line.lstrip().startswith("#"):
            pending = line
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        found.append(pending.strip())
        pending = None
    return found


def parse(command: str) -> tuple[dict[str, str], list[str], int] | None:
    """(environment, animllm's arguments, the exit code to expect), or None when the line is
    not one animllm command that runs alone (a pipe, a redirect, another program, a variable)."""
    stated = STATED_EXIT.search(command)
    try:
        words = shlex.split(COMMENT.sub("", STATED_EXIT.sub("", command)))
    except ValueError:   # an unbalanced quote: not a line this test can run
        return None
    environ = {}
    while words and ASSIGNMENT.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        environ[name] = value
    if not words or words[0] != "animllm" or any(w in SHELL_OPERATORS or "$" in w for w in words):
        return None
    return environ, words[1:], int(stated["code"]) if stated else 0


def command_blocks() -> list[Block]:
    return [block for path in DOC_FILES for block in split(path)[0] if is_command_block(block)]


def runnable(block: Block) -> bool:
    found = commands(block)
    return bool(found) and all(parse(command) is not None for command in found)


BLOCKS = command_blocks()
TO_RUN = [block for block in BLOCKS if block.not_run is None and runnable(block)]


def test_every_command_block_runs_or_says_why_not() -> None:
    silent = [block.where for block in BLOCKS if block.not_run is None and not runnable(block)]
    assert silent == [], "command blocks that cannot run here and carry no `<!-- not run: WHY -->` marker"
    assert all(block.not_run for block in BLOCKS if block.not_run is not None), "a not-run marker without a reason"


def test_a_not_run_marker_stands_only_before_a_command_block() -> None:
    misplaced = [block.where for path in DOC_FILES for block in split(path)[0]
                 if block.not_run is not None and not is_command_block(block)]
    assert misplaced == []


def test_the_docs_have_commands_that_run() -> None:
    # The collection itself can fail: README's --help and plan blocks are always among them.
    assert {block.path.name for block in TO_RUN} >= {"README.md", "commands.md"}


@pytest.fixture
def docs_environment(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated_env / "configs").symlink_to(REPO_ROOT / "configs")
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(missing=True))
    monkeypatch.setenv("COLUMNS", "80")


@pytest.mark.parametrize("block", TO_RUN, ids=lambda block: block.where)
def test_command_block_runs(block: Block, docs_environment) -> None:
    for command in commands(block):
        environ, arguments, expected = parse(command)
        result = run_cli(*arguments, env=environ)
        assert result.exit_code == expected, f"{block.where}: `{command}`\n{result.stdout}\n{result.stderr}"


def test_commands_are_read_as_a_shell_reads_them(tmp_path: Path) -> None:
    block = Block(tmp_path, 1, "console", (
        "$ animllm plan --vram 16 \\", "    --max-model-len 4096   # exit 1", "output line",
        "$ MAX_NUM_SEQS=64 animllm config show coder", "$ echo hi | animllm chat"), None)
    assert commands(block) == ["animllm plan --vram 16 --max-model-len 4096   # exit 1",
                               "MAX_NUM_SEQS=64 animllm config show coder", "echo hi | animllm chat"]
    assert parse(commands(block)[0]) == ({}, ["plan", "--vram", "16", "--max-model-len", "4096"], 1)
    assert parse(commands(block)[1]) == ({"MAX_NUM_SEQS": "64"}, ["config", "show", "coder"], 0)
    assert parse(commands(block)[2]) is None
    assert parse("make test    # sets up .venv") is None
    unprompted = Block(tmp_path, 1, "sh", ("# a comment", "animllm doctor   # the checklist", ""), None)
    assert commands(unprompted) == ["animllm doctor   # the checklist"] and runnable(unprompted)

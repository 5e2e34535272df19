"""No short flag means two things: across the whole app (the root's options and every
command's), each short flag stands for one long option."""

from __future__ import annotations

import typer.main

from animllm_cli.cli import app

# One meaning spelt by two long names: `-n` is "how many" (as in head -n) for logs' lines
# and bench's requests. The audit found -f (logs --follow, config show --format) and -p
# (chat --prompt, serve --port): the rarer of each pair lost its short flag.
SAME_MEANING = {
    "-n": {"--lines", "--requests"},
}


# By shape, not by class: Typer may bring its own copy of click.
def _commands(command, path: str = "animllm"):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, f"{path} {name}")


def short_flags() -> dict[str, dict[str, set[str]]]:
    """short flag -> long option -> the commands that spell it so."""
    found: dict[str, dict[str, set[str]]] = {}
    root = typer.main.get_command(app)
    for path, command in _commands(root):
        for param in command.params:
            if param.param_type_name != "option":
                continue
            names = [*param.opts, *param.secondary_opts]
            long_name = next((name for name in names if name.startswith("--")), param.name)
            for short in (name for name in names if len(name) == 2 and name[0] == "-" and name[1] != "-"):
                found.setdefault(short, {}).setdefault(long_name, set()).add(path)
    return found


def test_no_short_flag_means_two_things() -> None:
    conflicts = {short: set(longs) for short, longs in short_flags().items() if len(longs) > 1}
    assert conflicts == SAME_MEANING, {short: short_flags()[short] for short in conflicts.keys() ^ SAME_MEANING.keys()}


def test_the_audit_sees_every_command() -> None:
    """The walk reaches the root, the commands and the sub-commands (`config show`)."""
    flags = short_flags()
    assert flags["-c"] == {"--config": {"animllm"}}  # the root's alone: bench's concurrency is --concurrency
    assert flags["-f"] == {"--follow": {"animllm logs"}}
    assert flags["-p"] == {"--prompt": {"animllm chat"}}
    assert flags["-n"]["--requests"] == {"animllm bench", "animllm bench-mix"}

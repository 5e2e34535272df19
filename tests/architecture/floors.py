"""The floors of animllm, top to bottom: the one place the architecture is declared.

An import may run down a floor, or stay inside its own package; it never runs up, and
packages that share a floor never import each other (bench, top, chat and views reach the
gateway over HTTP only). The base floor is the exception: its small modules (errors,
paths, units, output, ...) may use one another.
"""

from __future__ import annotations

FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("entry point", ("animllm_cli.__main__",)),
    ("commands (Typer only)", ("animllm_cli.cli",)),
    ("the demo", ("animllm_cli.demo",)),
    ("each command's library side, and the gateway",
     ("animllm_cli.bench", "animllm_cli.top", "animllm_cli.chat", "animllm_cli.views", "animllm_cli.gateway")),
    ("the checklist", ("animllm_cli.doctor",)),
    ("vLLM: its interpreter, releases, command, supervisor, sleep", ("animllm_cli.engine",)),
    ("GPUs and the planner", ("animllm_cli.gpu",)),
    ("the Hugging Face cache", ("animllm_cli.pull",)),
    ("HTTP clients", ("animllm_cli.client",)),
    ("the leaves: admin wire schema, run file, bind rules, the gateway's loop and HTTP parser, clients' keys and usage",
     ("animllm_cli.wire", "animllm_cli.runfile", "animllm_cli.bind", "animllm_cli.server_stack", "animllm_cli.access")),
    ("config: data only", ("animllm_cli.config",)),
    ("base", ("animllm_cli.output", "animllm_cli.paths", "animllm_cli.errors", "animllm_cli.units",
              "animllm_cli.credentials", "animllm_cli.signals", "animllm_cli")),
]
BASE = len(FLOORS) - 1


def home(module: str) -> tuple[int, str]:
    """(floor, package) of an animllm module: the longest declared prefix that holds it."""
    best: tuple[int, str] | None = None
    for floor, (_, packages) in enumerate(FLOORS):
        for package in packages:
            if (module == package or module.startswith(package + ".")) and (best is None or len(package) > len(best[1])):
                best = (floor, package)
    if best is None:
        raise LookupError(f"{module} lies on no floor: declare its package in tests/architecture/floors.py")
    return best


def breach(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None if it may."""
    (upper, own), (lower, other) = home(importer), home(imported)
    if own == other or lower > upper or (lower == upper == BASE):
        return None
    if lower == upper:
        return f"{own} and {other} share the floor '{FLOORS[upper][0]}': neither imports the other"
    return f"{other} is on the floor '{FLOORS[lower][0]}', above {own}'s '{FLOORS[upper][0]}'"

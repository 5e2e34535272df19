"""The layout is a picture of the architecture: every import (module-level or inside a
function) runs down the floors declared in floors.py, there is no import loop, and only
the code that runs a gateway imports its server stack; everything else reads the leaves
(`wire`, `runfile`, `bind`)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

from tests.architecture.floors import breach, home
from tests.support.helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "animllm_cli"
SERVER_MODULES = {f"animllm_cli.gateway.{name}" for name in ("server", "app", "routes_clients", "routes_admin", "status")}
# Only the `serve` command starts a gateway from outside the gateway package.
MAY_IMPORT_SERVER = {"animllm_cli.cli.serve"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """Every animllm module `name` imports, anywhere in the file. `from pkg import mod` counts
    as importing the submodule `pkg.mod` when there is one, else the package."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return {target for target in found if target in MODULES and target != name}


def import_loop() -> list[str] | None:
    """One loop among the modules' imports, or None."""
    try:
        graphlib.TopologicalSorter({name: imports_of(name) for name in MODULES}).prepare()
    except graphlib.CycleError as exc:
        return exc.args[1]
    return None


def test_no_import_loop() -> None:
    loop = import_loop()
    assert loop is None, "import loop: " + " -> ".join(loop)


def test_only_serve_imports_the_gateway_server() -> None:
    offenders = sorted(
        f"{name} imports {target}" for name in MODULES if not name.startswith("animllm_cli.gateway")
        and name not in MAY_IMPORT_SERVER for target in imports_of(name) & SERVER_MODULES)
    assert offenders == []


def test_every_module_lies_on_a_floor() -> None:
    unplaced = []
    for name in MODULES:
        try:
            home(name)
        except LookupError as exc:
            unplaced.append(str(exc))
    assert unplaced == []


def test_no_import_runs_up_a_floor() -> None:
    breaches = sorted(f"{name} imports {target}: {why}" for name in MODULES for target in imports_of(name)
                      if (why := breach(name, target)))
    assert breaches == [], "\n".join(breaches)


@pytest.mark.parametrize("leaf", ["animllm_cli.wire", "animllm_cli.runfile", "animllm_cli.bind"])
def test_the_leaves_import_nothing_above_config(leaf: str) -> None:
    above = {t for t in imports_of(leaf) if home(t)[0] < home("animllm_cli.config")[0]}
    assert above == set()


def test_the_floors_catch_an_upward_and_a_sideways_import() -> None:
    """The rule can fail: config reaching into the engine, and top into the gateway."""
    assert "above" in breach("animllm_cli.config.loader", "animllm_cli.engine.command")
    assert "share the floor" in breach("animllm_cli.top.metrics", "animllm_cli.gateway.admission")
    assert breach("animllm_cli.gateway.pool", "animllm_cli.gateway.scheduler") is None
    assert breach("animllm_cli.cli.serve", "animllm_cli.gateway.server") is None
    assert breach("animllm_cli.errors", "animllm_cli.paths") is None


def test_the_checker_sees_a_loop_and_a_server_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: a loop and a forbidden import planted in copies are found."""
    fake = {"animllm_cli.x": tmp_path / "x.py", "animllm_cli.y": tmp_path / "y.py",
            "animllm_cli.gateway.server": tmp_path / "server.py"}
    fake["animllm_cli.x"].write_text("from animllm_cli import y\nimport animllm_cli.gateway.server\n")
    fake["animllm_cli.y"].write_text("def f():\n    import animllm_cli.x\n")
    fake["animllm_cli.gateway.server"].write_text("")
    monkeypatch.setattr(__import__(__name__, fromlist=["MODULES"]), "MODULES", fake)
    assert import_loop() is not None
    assert "animllm_cli.gateway.server" in imports_of("animllm_cli.x")

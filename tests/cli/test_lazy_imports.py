"""Fast start: the CLI must not import the heavy stacks it does not need.

Each case runs the real entry point in a fresh interpreter and records sys.modules at exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import atexit, json, os, sys
atexit.register(lambda: open(os.environ["PROBE_OUT"], "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["animllm", *json.loads(os.environ["PROBE_ARGS"])]
from animllm_cli.cli import main
main()
"""
HEAVY = ("torch", "vllm", "transformers", "uvicorn", "fastapi", "starlette", "aiohttp", "httpx", "numpy", "matplotlib")


def _imported(args: list[str], tmp_path: Path) -> set[str]:
    out = tmp_path / "modules.json"
    env = {**os.environ, "PROBE_OUT": str(out), "PROBE_ARGS": json.dumps(args)}
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 1), result.stderr  # doctor exits 1 here: no GPU
    return {name.split(".")[0] for name in json.loads(out.read_text())}


@pytest.mark.parametrize("args", [["--help"], ["config", "show", "coder", "--format", "args"], ["models", "--json"],
                                  ["doctor", "--json"], ["plan", "--json"], ["pull", "--help"]])
def test_no_heavy_imports(args: list[str], tmp_path: Path) -> None:
    loaded = _imported(args, tmp_path)
    assert not loaded & set(HEAVY), f"{args} imported {sorted(loaded & set(HEAVY))}"


def test_help_does_not_even_load_the_config_stack(tmp_path: Path) -> None:
    loaded = _imported(["--help"], tmp_path)
    assert not loaded & {"pydantic", "yaml", "dotenv", "psutil", "pynvml", "huggingface_hub", "filelock"}


@pytest.mark.parametrize("args", [["--help"], ["bench", "--help"], ["config", "show", "--help"]])
def test_help_loads_no_rich(args: list[str], tmp_path: Path) -> None:
    """Click's plain help: Typer's Rich help would import Markdown, Pygments and tracebacks."""
    assert not _imported(args, tmp_path) & {"rich", "markdown_it", "pygments", "attr"}


def test_probe_can_see_an_import(tmp_path: Path) -> None:
    """The probe itself works: a command that does load pydantic shows it."""
    assert "pydantic" in _imported(["models", "--json"], tmp_path)


def test_top_help_loads_neither_http_nor_the_metrics_parser(tmp_path: Path) -> None:
    loaded = _imported(["top", "--help"], tmp_path)
    assert not loaded & {*HEAVY, "prometheus_client", "psutil"}


def test_matplotlib_only_with_plot(tmp_path: Path) -> None:
    """bench-compare reads and prints two runs without the plotting stack; --plot loads it."""
    from tests.support.saved_runs import saved_run

    saved = str(saved_run(tmp_path / "run.json"))
    plain = _imported(["bench-compare", saved, saved], tmp_path)
    assert not plain & {"matplotlib", "numpy", "PIL"}
    drawn = _imported(["bench-compare", saved, saved, "--plot", str(tmp_path / "p.png")], tmp_path)
    assert "matplotlib" in drawn and (tmp_path / "p.png").stat().st_size > 0

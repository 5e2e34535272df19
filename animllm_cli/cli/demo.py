"""`animllm demo`: the whole flow on the CPU build of vLLM with two tiny local models."""

from __future__ import annotations

from typing import Annotated

import typer

from animllm_cli.cli import common


def demo(ctx: typer.Context,
         cpu: Annotated[bool, typer.Option("--cpu", help="Run the CPU demo even where a GPU is present.")] = False) -> None:
    """Build two tiny models, serve, chat with each (a switch), benchmark, stop, summarise."""
    from animllm_cli.demo.run import run_demo

    raise typer.Exit(run_demo(common.output(ctx), force_cpu=cpu))

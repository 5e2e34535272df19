"""`animllm demo`: the whole flow on the CPU build of vLLM with three tiny local models."""

from __future__ import annotations

from typing import Annotated

import typer

from animllm_cli.cli import common


def demo(ctx: typer.Context,
         cpu: Annotated[bool, typer.Option("--cpu", help="Run the CPU demo even where a GPU is present.")] = False) -> None:
    """Build three tiny models, serve, chat, bench, stop.

    On the CPU build of vLLM: two models stay resident side by side (the ps table shows
    them), the third evicts the least recently used; then a short benchmark and a stop
    that leaves no engine behind."""
    from animllm_cli.demo.run import run_demo

    raise typer.Exit(run_demo(common.output(ctx), force_cpu=cpu))

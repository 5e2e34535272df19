"""`animllm top`: the GPUs, the engines and the gateway's queue, refreshed every second."""

from __future__ import annotations

from typing import Annotated

import typer

from animllm_cli.cli import common


def top(ctx: typer.Context,
        once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit. tokens/s compares two "
                                                           "readings, so this takes --interval seconds.")] = False,
        json_output: Annotated[bool, typer.Option("--json", help="JSON: with --once one object; otherwise one "
                                                                 "line per refresh (JSON Lines).")] = False,
        interval: Annotated[float, typer.Option("--interval", min=0.1, metavar="S",
                                                help="Seconds between refreshes.")] = 1.0,
        config: common.ConfigOption = None) -> None:
    """A live view of the GPUs, engines and the gateway's queue.

    Each GPU (VRAM, use), each engine (state, requests, KV cache, tokens/s), the queue and
    recent switches. `q` or Ctrl-C leaves."""
    from animllm_cli.top.snapshot import Reader

    out = common.output(ctx)
    reader = Reader(common.load(ctx, config).config.server.api_key_env)
    if once:
        _once(out, reader, interval, json_output)
    elif out.stdout_is_terminal() and not json_output:
        _screen(out, reader, interval)
    else:
        _stream(out, reader, interval, json_output)


def _once(out, reader, interval: float, json_output: bool) -> None:
    """One snapshot; exit 1 when no gateway answered (as `status`), after showing the GPUs."""
    from animllm_cli.top import snapshot
    from animllm_cli.top.render import render

    try:
        shot = snapshot.once(reader, interval)
    finally:
        reader.close()
    out.result(shot, lambda s: out.show(render(s, out.stdout_size()[0])), json=json_output)
    if not shot.gateway.reachable:
        out.error(shot.gateway.problem or "the gateway did not answer", shot.gateway.hint)
        raise typer.Exit(1)


def _screen(out, reader, interval: float) -> None:
    """The terminal's alternate screen, redrawn for its size, until q, Ctrl-C or SIGTERM."""
    from animllm_cli.top import view
    from animllm_cli.top.render import render

    with out.screen() as live:
        def draw(shot) -> None:
            width, height = out.stdout_size()
            live.update(render(shot, width, height, live=True), refresh=True)

        view.run(view.Sampler(reader, interval), draw, size=out.stdout_size)


def _stream(out, reader, interval: float, json_output: bool) -> None:
    """stdout is not a terminal (a file, a pipe) or --json: one snapshot per refresh, as
    text blocks or JSON Lines, never cursor movements; until Ctrl-C or SIGTERM."""
    from animllm_cli.top import view
    from animllm_cli.top.render import render

    def draw(shot) -> None:
        if json_output:
            out.json_line(shot)
        else:
            out.show(render(shot, out.stdout_size()[0]))
            out.text("")

    view.run(view.Sampler(reader, interval), draw, size=out.stdout_size, every_snapshot_only=True)

"""`animllm usage`: what each client used, per model, from the gateway's durable record."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from animllm_cli.cli import common


def usage(ctx: typer.Context,
          since: Annotated[Optional[str], typer.Option("--since", metavar="SPAN|DATE", show_default=False,
                                                       help="From this long ago (30m, 12h, 7d) or this date "
                                                            "(2026-12-01, 2026-12-01T09:00); default: all.")] = None,
          json_output: common.JsonOption = False) -> None:
    """What each client used, per model: requests, tokens, waits.

    Per client and model, read from the record the gateway keeps in the state directory (it survives restarts)."""
    from animllm_cli.access.usage import UsageLog, parse_since

    out = common.output(ctx)
    log = UsageLog()
    start = parse_since(since) if since else None
    report = {"since": start, "record": str(log.path), "usage": log.summary(start)}
    out.result(report, lambda r: _show(out, r), json=json_output)


def _show(out, report: dict) -> None:
    from animllm_cli.output import table

    rows = [[u["client"], u["model"], f"{u['requests']:,}", f"{u['errors']:,}", f"{u['tokens_in']:,}",
             f"{u['tokens_out']:,}", f"{u['waited_s']:.1f}"] for u in report["usage"]]
    if not rows:
        out.info(f"no usage recorded{' in that span' if report['since'] else ''} ({report['record']})")
        return
    out.show(table("Usage", ["client", "model", "requests", "errors", "tokens in", "tokens out", "switch wait s"],
                   rows))

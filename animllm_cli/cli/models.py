"""`animllm models`: the configured models at a glance."""

from __future__ import annotations

import typer

from animllm_cli.cli import common


def models(ctx: typer.Context, config: common.ConfigOption = None, json_output: common.JsonOption = False) -> None:
    """List the configured models: name, tasks and aliases, source, profile, quantisation, context."""
    from animllm_cli.config.summary import models_report

    out = common.output(ctx)
    report = models_report(common.load(ctx, config))
    out.result(report, lambda r: _show_models(out, r), json=json_output)


def _show_models(out, report) -> None:
    from animllm_cli.output import table

    rows = [[("* " if m["default"] else "") + m["name"], ", ".join(m["tasks"]), ", ".join(m["aliases"]),
             m["source"], m["profile"], m["quantization"] or "-", m["max_model_len"] or "vLLM default"]
            for m in report["models"]]
    columns = ["name", "tasks", "aliases", "source", "profile", "quant", "context"]
    out.show(table("Models (* = default)", columns, rows, no_wrap=("name", "profile", "quant", "context")))

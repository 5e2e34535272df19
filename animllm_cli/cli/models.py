"""`animllm models`: the configured models at a glance."""

from __future__ import annotations

import typer

from animllm_cli.cli import common


def models(ctx: typer.Context, config: common.ConfigOption = None, json_output: common.JsonOption = False) -> None:
    """List the configured models: name, where they run, tasks and aliases, source, profile, quantisation, context."""
    from animllm_cli.views.config import models_report

    out = common.output(ctx)
    report = models_report(common.load(ctx, config))
    out.result(report, lambda r: _show_models(out, r), json=json_output)


def _show_models(out, report) -> None:
    from animllm_cli.output import table

    rows = [[("* " if m["default"] else "") + m["name"], _where(m), ", ".join(m["tasks"]), ", ".join(m["aliases"]),
             *_engine_cells(m)] for m in report["models"]]
    columns = ["name", "where", "tasks", "aliases", "source", "profile", "quant", "context"]
    out.show(table("Models (* = default)", columns, rows, no_wrap=("name", "profile", "quant", "context")))


def _where(model) -> str:
    """"local", or the host:port of each server a remote model is served by."""
    from animllm_cli.views.config import host_port

    upstream = model["upstream"]
    return ", ".join(dict.fromkeys(host_port(url) for url in upstream["urls"])) if upstream else "local"


def _engine_cells(model) -> list[str]:
    """Source, profile, quantisation and context: what an engine here runs with ("-" for a remote model)."""
    if model["upstream"]:
        return ["-", model["profile"] or "-", "-", "-"]
    return [model["source"], model["profile"], model["quantization"] or "-", model["max_model_len"] or "vLLM default"]

"""`animllm models`: the configured models at a glance."""

from __future__ import annotations

import typer

from animllm_cli.cli import common


def models(ctx: typer.Context, config: common.ConfigOption = None, json_output: common.JsonOption = False) -> None:
    """List the configured models: tasks, aliases, source, engine.

    Name, tasks and aliases, source (or the servers of a remote one), profile, quantisation, context."""
    from animllm_cli.views.config import models_report

    out = common.output(ctx)
    report = models_report(common.load(ctx, config))
    out.result(report, lambda r: _show_models(out, r), json=json_output)


def _show_models(out, report) -> None:
    from animllm_cli.output import table

    models = report["models"]
    sources = dict(zip((m["name"] for m in models), repo_names([m["source"] for m in models])))
    rows = [[("* " if m["default"] else "") + m["name"], ", ".join(m["tasks"]), ", ".join(m["aliases"]),
             _source(m, sources[m["name"]]), *_engine_cells(m)] for m in models]
    columns = ["name", "tasks", "aliases", "source", "profile", "quant", "context"]
    out.show(table("Models (* = default)", columns, rows, no_wrap=("name", "profile", "quant"),
                   below=("aliases", "profile", "quant", "context", "tasks"), whole=30))


def repo_names(sources: list[str | None]) -> list[str | None]:
    """Hugging Face repos by their name alone, `Qwen2.5-VL-7B-Instruct-AWQ`, where no other
    org's repo of the list has that name; paths and the rest as they are."""
    def repo(source: str | None) -> tuple[str, str] | None:
        org, slash, name = (source or "").partition("/")
        return (org, name) if slash and org and name and "/" not in name and org[0] not in ".~" else None

    orgs: dict[str, set[str]] = {}
    for found in filter(None, map(repo, sources)):
        orgs.setdefault(found[1], set()).add(found[0])
    return [found[1] if found and len(orgs[found[1]]) == 1 else source
            for source, found in zip(sources, map(repo, sources))]


def _source(model, source: str) -> str:
    """Where a model comes from: its source here, or the host:port of each server that
    serves it elsewhere."""
    from animllm_cli.views.config import host_port

    upstream = model["upstream"]
    return "remote: " + ", ".join(dict.fromkeys(host_port(url) for url in upstream["urls"])) if upstream else source


def _engine_cells(model) -> list[str]:
    """Profile, quantisation and context: what an engine here runs with ("-" for a remote model)."""
    if model["upstream"]:
        return [model["profile"] or "-", "-", "-"]
    return [model["profile"], model["quantization"] or "-", model["max_model_len"] or "vLLM default"]

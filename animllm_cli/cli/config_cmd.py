"""`animllm config show`: the effective configuration, the exact engine command, and
where every value came from."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from animllm_cli.cli import common
from animllm_cli.cli.help import Command

app = typer.Typer(no_args_is_help=True, help="Inspect the effective configuration.")


class Format(str, Enum):
    yaml = "yaml"
    json = "json"
    args = "args"
    env = "env"


@app.command("show", cls=Command)
def show(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Argument(
        metavar="MODEL", help="Model name, alias or source; without it, the whole config (args/env: the default model).",
        show_default=False, autocompletion=common.complete_models)] = None,
    fmt: Annotated[Format, typer.Option("--format", metavar="FORMAT", help="yaml | json | args (engine command) | env.")] = Format.yaml,
    json_output: common.JsonOption = False,
    explain: Annotated[bool, typer.Option("--explain", help="Show where each value came from.")] = False,
    port: Annotated[Optional[int], typer.Option("--port", metavar="PORT", min=1, max=65535, show_default=False,
                                                help="Engine port for the command (default: engine.port).")] = None,
    vllm_version: Annotated[Optional[str], typer.Option(
        "--vllm-version", show_default=False, metavar="X.Y.Z",
        help="Spell and check the engine command for this vLLM release (default: the installed one), "
             "to prepare a config for another machine.")] = None,
    sets: common.SetOption = None,
    gpu_memory_utilization: common.GpuUtilOption = None,
    max_model_len: common.MaxModelLenOption = None,
    config: common.ConfigOption = None,
) -> None:
    """Print the effective config, or one model's engine settings.

    MODEL: its merged settings, the engine's command line and environment.

    --format args prints the shell line the gateway runs for the engine; secrets (its per-launch key too) appear as "$NAME" references, never as values.
    The flags are spelt as the engine's vLLM release takes them (--vllm-version: another release's); a setting that
    release does not have is an error (exit 2) naming the first release that has it.
    """
    from animllm_cli.views import config as config_views

    out = common.output(ctx)
    fmt = Format.json if json_output else fmt
    overrides = common.model_overrides(sets, model, gpu_memory_utilization=gpu_memory_utilization,
                                       max_model_len=max_model_len)
    loaded = common.load(ctx, config, overrides)
    whole_config = model is None and fmt in (Format.yaml, Format.json)

    if vllm_version is not None and (whole_config or loaded.model(model).remote):
        from animllm_cli.errors import UsageError

        raise UsageError("--vllm-version spells a model's engine command; this output has none",
                         hint="name a model served here: animllm config show MODEL --format args --vllm-version X")
    if whole_config:
        data = config_views.explain_config(loaded) if explain else config_views.config_report(loaded)
    elif (view := loaded.model(model)).remote and (explain or fmt in (Format.yaml, Format.json)):  # no engine here
        data = config_views.explain_remote_model(loaded, view) if explain else config_views.remote_model_report(view)
    else:
        view, command = config_views.engine_command_for(loaded, model, port, vllm_version)
        for note in config_views.vllm_notes(command):
            out.warn(note)
        if explain:
            data = config_views.explain_model(loaded, view, command)
        elif fmt is Format.args:
            out.text(command.shell_line())
            out.info(config_views.PER_LAUNCH_KEY_NOTE)
            return
        elif fmt is Format.env:
            out.text(_env_lines(command))
            return
        else:
            data = config_views.model_report(loaded, view, command)

    if explain and fmt is not Format.json:
        _show_explain(out, data)
    elif fmt is Format.json:
        out.json({"schema_version": config_views.SCHEMA_VERSION, "values": data} if explain else data)
    else:
        import yaml

        out.text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000))


def _env_lines(command) -> str:
    import shlex

    from animllm_cli.credentials import is_secret_name

    lines = []
    for var, value in command.env.items():
        lines.append(f"# {var} is set (secret, not shown)" if is_secret_name(var) else f"{var}={shlex.quote(value)}")
    return "\n".join(lines)


def _show_explain(out, rows) -> None:
    from animllm_cli.output import table

    out.show(table(None, ["key", "value", "source"],
                   [[r["key"], _cell(r["value"]), r["source"]["text"]] for r in rows]))


def _cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value)
    return str(value)

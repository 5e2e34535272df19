"""The Typer application: global options, the error table, and the command modules.

Each command lives in its own module and stays thin: parse, call library code, render.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from typer.core import TyperGroup

from animllm_cli import __version__
from animllm_cli.cli import common
from animllm_cli.errors import AnimllmError
from animllm_cli.output import Output


def _animllm_error(exc: BaseException) -> tuple[int, str, str | None]:
    assert isinstance(exc, AnimllmError)
    return exc.exit_code, exc.message, exc.hint


def _file_error(exc: BaseException) -> tuple[int, str, str | None]:
    assert isinstance(exc, OSError)
    return 1, f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), None


# Ordered: the first matching row decides the message and the exit code.
ERROR_TABLE: list[tuple[type[BaseException], Callable[[BaseException], tuple[int, str, str | None]]]] = [
    (AnimllmError, _animllm_error),
    (FileNotFoundError, _file_error),
    (PermissionError, _file_error),
]


class AnimllmGroup(TyperGroup):
    """Turns expected exceptions into one clean message and the documented exit code, and
    bench's old spellings into today's (for one release)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except tuple(cls for cls, _ in ERROR_TABLE) as exc:
            handler = next(h for cls, h in ERROR_TABLE if isinstance(exc, cls))
            code, message, hint = handler(exc)
            common.output(ctx).error(message, hint)
            raise typer.Exit(code) from None

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        """`bench`'s spellings from before bench-mix and bench-compare, turned into today's
        for one release, each with a warning (docs/benchmarks.md)."""
        name, command, rest = super().resolve_command(ctx, args)
        if name == "bench" and not ctx.resilient_parsing:
            from animllm_cli.cli.bench_old_spellings import old_spellings

            name, rest, notes = old_spellings(rest)
            command = self.get_command(ctx, name)
            for note in notes:
                common.output(ctx).warn(note)
        return name, command, rest


app = typer.Typer(
    name="animllm",
    cls=AnimllmGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # Click's plain help: Typer's Rich help imports Markdown and tracebacks (~0.1 s)
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Run a single-GPU, multi-model LLM backend on vLLM: what fits in VRAM, safe model switches, measured serving.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"animllm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", envvar="ANIMLLM_CONFIG", metavar="PATH", show_default=False,
        help="Config file (default: ./animllm.yaml and the user config dir).")] = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More detail on stderr.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only data and errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    ctx.obj = common.AppState(config=config, output=Output(quiet=quiet, verbose=verbose))


def _register() -> None:
    from animllm_cli.cli import admin, bench, chat, config_cmd, demo, doctor, keys, models, plan, pull, serve, top, usage
    from animllm_cli.cli.help import Command

    commands = {"doctor": doctor.doctor, "plan": plan.plan, "serve": serve.serve, "switch": admin.switch,
                "status": admin.status, "ps": admin.ps, "unload": admin.unload, "stop": admin.stop,
                "logs": admin.logs, "chat": chat.chat, "bench": bench.bench, "bench-mix": bench.bench_mix,
                "bench-compare": bench.bench_compare, "demo": demo.demo, "models": models.models, "pull": pull.pull,
                "top": top.top, "usage": usage.usage}
    # Extra arguments: vLLM's spelling `--goodput ttft:500 tpot:50` (bench takes them back).
    extra_args = {"bench", "bench-mix"}
    for name, function in commands.items():
        settings = {"allow_extra_args": True} if name in extra_args else None
        app.command(name, cls=Command, context_settings=settings)(function)
    app.add_typer(config_cmd.app, name="config")
    app.add_typer(keys.app, name="keys")


_register()


def main() -> None:
    app()

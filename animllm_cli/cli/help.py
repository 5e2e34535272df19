"""How a command's `--help` reads: Click's plain layout (the app sets no rich markup mode,
which keeps Rich and Markdown out of `--help`), each parameter shown by its metavar."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand


class Command(TyperCommand):
    """Arguments shown as options are: by their metavar alone. Typer adds the Python type to
    an argument's name (`MODEL <str>`), which tells a user nothing."""

    def format_options(self, ctx: typer.Context, formatter: Any) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                name, text = record
                arguments.append((name.removesuffix(f" {param.display_type_rich(ctx=ctx)}"), text))
            else:
                options.append(record)
        for title, records in (("Arguments", arguments), ("Options", options)):
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)

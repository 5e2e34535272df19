"""The one place that decides how results look: human (Rich), JSON, or quiet.

Data goes to stdout, messages and progress to stderr. Rich turns colour off by itself
when the stream is not a terminal or NO_COLOR is set. Machine formats (JSON, YAML, shell
lines) are written plainly, never through Rich, so nothing wraps or gets highlighted.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType


class Output:
    def __init__(self, *, quiet: bool = False, verbose: int = 0) -> None:
        self.quiet = quiet
        self.verbose = verbose

    # Consoles are made per call: tests and `CliRunner` swap sys.stdout/sys.stderr.
    @staticmethod
    def _console(stderr: bool) -> Console:
        from rich.console import Console

        # Messages on stderr are never hard-wrapped: paths and key names stay whole.
        return Console(stderr=stderr, highlight=False, soft_wrap=stderr)

    def json(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")

    def text(self, text: str) -> None:
        """Plain data for scripts: printed as is, newline-terminated."""
        sys.stdout.write(text if text.endswith("\n") else text + "\n")

    def show(self, renderable: RenderableType) -> None:
        """A Rich table or other renderable for people, on stdout."""
        self._console(stderr=False).print(renderable)

    def info(self, message: str) -> None:
        if not self.quiet:
            self._console(stderr=True).print(message)

    def debug(self, message: str) -> None:
        if self.verbose:
            self._console(stderr=True).print(f"[dim]{message}[/dim]")

    def warn(self, message: str) -> None:
        self._console(stderr=True).print(f"[yellow]warning:[/yellow] {message}")

    def error(self, message: str, hint: str | None = None) -> None:
        from rich.markup import escape

        console = self._console(stderr=True)
        console.print(f"[bold red]error:[/bold red] {escape(message)}")
        if hint:
            console.print(f"[dim]hint:[/dim] {escape(hint)}")


def table(title: str | None, columns: list[str], rows: list[list[Any]], *, no_wrap: tuple[str, ...] = ()) -> Any:
    """A table for people. Columns named in `no_wrap` stay on one line; the rest fold."""
    from rich import box
    from rich.table import Table

    # Light borders and word wrapping: it stays readable at 80 columns and in a pipe.
    headed = any(columns)  # a key/value table passes empty column names: no header row
    result = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD if headed else None,
                   pad_edge=False, show_header=headed)
    for column in columns:
        # fold, never truncate: every character is data
        result.add_column(column, overflow="fold", no_wrap=column in no_wrap)
    for row in rows:
        result.add_row(*("" if cell is None else str(cell) for cell in row))
    return result


def phase_printer(out: Output, fmt: str) -> Any:
    """An engine `on_progress` callback that prints a line only when a model's start-up
    phase changes. `fmt` gets elapsed_s, model and phase."""
    last: dict[str, str] = {}

    def progress(p: Any) -> None:
        if last.get(p.model) != p.phase:
            last[p.model] = p.phase
            out.info(fmt.format(elapsed_s=p.elapsed_s, model=p.model, phase=p.phase))

    return progress

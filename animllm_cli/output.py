"""The one place that decides how results look: human (Rich), JSON, or quiet; and the
only place that makes Rich consoles, spinners, progress bars and live views.

Data goes to stdout, messages and progress to stderr. Rich turns colour off by itself
when the stream is not a terminal or NO_COLOR is set. Machine formats (JSON, YAML, shell
lines) are written plainly, never through Rich, so nothing wraps or gets highlighted.

Text is literal, as hatch's Terminal has it: a message, a table cell, a title or a
caption is printed as it is, so a model name, a path or a server's answer that holds
`[bold]` or `:smile:` can never be read as markup or emoji. Styled text is built
explicitly, with `styled` and `joined` (Rich `Text`), never spelt in markup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.progress import Progress
    from rich.text import Text

    Message = str | Text  # plain text, printed as it is, or text styled with `styled`/`joined`


def jsonable(data: Any) -> Any:
    """Plain JSON data for a result: a typed result serializes itself (its own `to_json`,
    pydantic's JSON mode, or its dataclass fields); anything else is taken as it is."""
    if hasattr(data, "to_json"):
        return data.to_json()
    if hasattr(data, "model_dump"):
        return data.model_dump(mode="json")
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.asdict(data)
    return data


def json_text(data: Any) -> str:
    """The one JSON form of a result, for stdout and for files alike."""
    return json.dumps(jsonable(data), indent=2, ensure_ascii=False, default=str)


class Output:
    def __init__(self, *, quiet: bool = False, verbose: int = 0) -> None:
        self.quiet = quiet
        self.verbose = verbose

    # Consoles are made per call: tests and `CliRunner` swap sys.stdout/sys.stderr.
    @staticmethod
    def _console(stderr: bool) -> Console:
        from rich.console import Console

        # Messages on stderr are never hard-wrapped: paths and key names stay whole.
        return Console(stderr=stderr, highlight=False, soft_wrap=stderr, markup=False, emoji=False)

    def json(self, data: Any) -> None:
        sys.stdout.write(json_text(data) + "\n")

    def result(self, data: Any, render: Callable[[Any], None], *, json: bool) -> None:
        """A command's result: JSON for scripts, else `render(data)` for people. Quiet does
        not apply: a result is data, not a message."""
        if json:
            self.json(data)
        else:
            render(data)

    def text(self, text: str) -> None:
        """Plain data for scripts: printed as is, newline-terminated."""
        sys.stdout.write(text if text.endswith("\n") else text + "\n")

    def show(self, renderable: RenderableType) -> None:
        """A Rich table or other renderable for people, on stdout."""
        self._console(stderr=False).print(renderable)

    def info(self, message: Message) -> None:
        if not self.quiet:
            self._console(stderr=True).print(message)

    def debug(self, message: Message) -> None:
        if self.verbose:
            self._console(stderr=True).print(styled(message, "dim"))

    def warn(self, message: Message) -> None:
        self._console(stderr=True).print(joined(styled("warning:", "yellow"), " ", message))

    @contextlib.contextmanager
    def status(self, message: Message) -> Iterator[None]:
        """A spinner on stderr while the block runs. Quiet: nothing at all. Not a terminal
        (a log, a pipe, CI): the message once as a line, since an animation would either
        vanish (transient) or fill the log with frames."""
        if self.quiet:
            yield
            return
        console = self._console(stderr=True)
        if not console.is_terminal:
            console.print(message)
            yield
            return
        with console.status(joined(message)):  # a Text: a spinner reads a plain str as markup
            yield

    def progress(self) -> Progress:
        """A transient progress bar on stderr (description, bar, done/total, elapsed), silent
        when quiet. Use it as a context manager; `add_task` and `advance` as Rich's."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        return Progress(_description(), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=self._console(stderr=True), transient=True, disable=self.quiet)

    def downloads(self) -> "Downloads":
        """Byte progress on stderr for file transfers: a bar per file and one overall, with
        size, speed and time left. Not a terminal: one line per finished file instead of an
        animation. Quiet: nothing."""
        return Downloads(self)

    def live(self, renderable: RenderableType) -> Live:
        """A view on stdout that `update()` redraws in place, such as an answer rendered as
        Markdown while it streams. It is the data itself, so quiet does not hide it."""
        from rich.live import Live

        return Live(renderable, console=self._console(stderr=False), refresh_per_second=12,
                    vertical_overflow="visible")

    def screen(self) -> Live:
        """A full-screen view on stdout, in the terminal's alternate screen as top and nvtop
        draw (leaving restores what was there). No refresh thread: the caller redraws with
        `update(renderable, refresh=True)` at its own pace. For a terminal only."""
        from rich.live import Live

        return Live(console=self._console(stderr=False), screen=True, auto_refresh=False, transient=True,
                    redirect_stdout=False, redirect_stderr=False)

    def stdout_size(self) -> tuple[int, int]:
        """stdout's (columns, rows): the terminal's own now (it may have been resized), else
        COLUMNS and LINES, else 80 x 25."""
        console = self._console(stderr=False)
        return console.width, console.height

    def stdout_is_terminal(self) -> bool:
        return self._console(stderr=False).is_terminal

    def json_line(self, data: Any) -> None:
        """One result as one compact line (JSON Lines), flushed: for a stream of them."""
        sys.stdout.write(json.dumps(jsonable(data), ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()

    def error(self, message: Message, hint: Message | None = None) -> None:
        console = self._console(stderr=True)
        console.print(joined(styled("error:", "bold red"), " ", message))
        if hint:
            console.print(joined(styled("hint:", "dim"), " ", hint))


class Downloads:
    """See `Output.downloads`. Files are keyed by their label; `overall` sets the bar that
    sums them (a model's missing bytes)."""

    def __init__(self, out: Output) -> None:
        self._out = out
        self._progress: Progress | None = None
        self._overall: Any = None
        self._files: dict[str, Any] = {}
        self._done: dict[str, int] = {}

    def __enter__(self) -> "Downloads":
        console = self._out._console(stderr=True)
        if not self._out.quiet and console.is_terminal:
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

            self._progress = Progress(_description(), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def overall(self, description: str, total: int) -> None:
        self._done.clear()
        if self._progress is None:
            return
        if self._overall is not None:
            self._progress.remove_task(self._overall)
        self._overall = self._progress.add_task(description, total=total or None)

    def file_started(self, label: str, total: int | None, done: int = 0) -> None:
        self._done[label] = done
        if self._progress is not None:
            self._files[label] = self._progress.add_task(f"  {label}", total=total, completed=done)
            self._update_overall()

    def file_position(self, label: str, done: int) -> None:
        self._done[label] = done
        if self._progress is not None and label in self._files:
            self._progress.update(self._files[label], completed=done)
            self._update_overall()

    def file_finished(self, label: str, line: str) -> None:
        """`line` (plain text) stays on stderr: in a log it is all that shows."""
        if self._progress is not None and label in self._files:
            self._progress.remove_task(self._files.pop(label))
            self._progress.console.print(line)
        elif not self._out.quiet:
            self._out._console(stderr=True).print(line)

    def _update_overall(self) -> None:
        if self._progress is not None and self._overall is not None:
            self._progress.update(self._overall, completed=sum(self._done.values()))


def _description() -> Any:
    """A progress bar's description column, taken literally (Rich's default reads markup)."""
    from rich.progress import TextColumn

    return TextColumn("{task.description}", markup=False)


def styled(text: Message, style: str) -> Text:
    """`text` in a Rich style ("bold", "dim", "green"): the way to style a message, a table
    cell or a title. The text itself is literal; a `Text` keeps its own styles inside."""
    from rich.text import Text

    return Text.assemble(text, style=style)


def joined(*parts: Message) -> Text:
    """Plain and styled pieces as one text, each literal: joined(styled("1/6", "bold"), " building")."""
    from rich.text import Text

    return Text.assemble(*parts)


def table(title: Message | None, columns: list[Message], rows: list[list[Any]], *, no_wrap: tuple[str, ...] = (),
          below: tuple[str, ...] = (), whole: int = 16, caption: Message | None = None) -> Any:
    """A table for people that fits the terminal it is printed in (animllm_cli.fit): every
    cell, header, title and caption literal (a `Text` keeps its styles). A column named in
    `no_wrap` keeps each value on one line, cut in the middle when there is no room; the
    others wrap between words. A key/value table (empty column names) keeps its keys on one
    line. The columns named in `below` leave the table, in that order, for a line under it
    per row while the terminal is too narrow for every value up to `whole` cells to stay
    whole. Never a word folded, never a line wider than the terminal."""
    from animllm_cli.fit import Column, FittedTable

    headed = any(columns)  # a key/value table passes empty column names: no header row
    cells = [[_cell(value) for value in row] for row in rows]
    return FittedTable(_annotation(title, "table.title"), _annotation(caption, "table.caption"),
                       [Column(joined(column), [row[index] for row in cells],
                               str(column) in no_wrap if headed else index == 0)
                        for index, column in enumerate(columns)], headed, below, whole)


def lines_below(*lines: Message, indent: int = 0, hang: int = 2) -> Any:
    """Text under a table (notes, fixes, hints) that fits the terminal: each line `indent`
    cells in, wrapped between words onto lines `hang` cells further in; a word wider than
    the terminal is cut in the middle."""
    from animllm_cli.fit import FittedText

    return stacked(*(FittedText(joined(line), indent, hang) for line in lines))


def _cell(value: Any) -> Text:
    """A cell's value as literal text: None is empty, a number its str, a `Text` itself."""
    from rich.text import Text

    return value if isinstance(value, Text) else Text("" if value is None else str(value))


def _annotation(text: Message | None, style: str) -> Text | None:
    """A title or caption as a `Text`, in the table's own style for it (Rich applies that
    style only to a str, which it would read as markup)."""
    return None if text is None else styled(text, style)


def stacked(*renderables: Any) -> Any:
    """Renderables one under another, as one (a view built of tables and lines)."""
    from rich.console import Group

    return Group(*renderables)


def phase_printer(out: Output) -> Any:
    """An engine `on_progress` callback that prints a line only when a model's start-up
    phase changes: the seconds since the start (dim), the model and the phase."""
    last: dict[str, str] = {}

    def progress(p: Any) -> None:
        if last.get(p.model) != p.phase:
            last[p.model] = p.phase
            out.info(joined(styled(f"{p.elapsed_s:6.1f}s", "dim"), f"  {p.model}: {p.phase}"))

    return progress

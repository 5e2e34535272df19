"""Tables and lines that fit the terminal they are printed in, at its width then.

Nothing is folded inside a word: text wraps between words, and a value (a word, or a
one-line cell) wider than its room is cut in the middle, `Qwen2.5-Co…Instruct-AWQ`, so
that both its ends stay readable. Rich calls `__rich_console__` with the width there is;
`animllm_cli.output` builds these, and is the only module that prints them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator

from rich.cells import cell_len
from rich.text import Text

ELLIPSIS = "…"
GAP = 2        # cells between two columns
MIN_CUT = 8    # a column is cut below this only when every wider one is already down to it
WORD = re.compile(r"\S+")


def middle_cut(text: Text, width: int) -> Text:
    """`text` in at most `width` cells: whole if it fits, else its head and tail around an
    ellipsis (the head takes the odd cell). Styles go with the characters they cover."""
    if cell_len(text.plain) <= width:
        return text
    if width < 2:
        return Text(ELLIPSIS[:width])
    head = _chars_within(text.plain, width // 2)
    tail = _chars_within(text.plain[::-1], (width - 1) // 2)
    return Text.assemble(text[:head], ELLIPSIS, text[len(text.plain) - tail:])


def _chars_within(plain: str, cells: int) -> int:
    """How many of `plain`'s first characters take at most `cells` cells."""
    used = 0
    for count, char in enumerate(plain):
        used += cell_len(char)
        if used > cells:
            return count
    return len(plain)


def cut_words(text: Text, width: int) -> Text:
    """`text` with each word wider than `width` cut in the middle: it then wraps between
    words only."""
    long = [m for m in WORD.finditer(text.plain) if cell_len(m.group()) > width]
    if not long:
        return text
    pieces, start = [], 0
    for match in long:
        pieces += [text[start:match.start()], middle_cut(text[match.start():match.end()], width)]
        start = match.end()
    return Text.assemble(*pieces, text[start:])


def _longest_word(text: Text) -> int:
    return max((cell_len(word) for word in text.plain.split()), default=0)


def _longest_line(text: Text) -> int:
    return max((cell_len(line) for line in text.plain.splitlines()), default=0)


@dataclass
class Column:
    header: Text
    cells: list[Text]
    one_line: bool            # each line of a cell stays one line (cut in the middle); else it wraps at words

    @property
    def natural(self) -> int:
        """The width it takes when nothing is wrapped or cut."""
        return max(self.content, _longest_line(self.header))

    @property
    def content(self) -> int:
        """The width its cells take unwrapped, the header wrapped between words."""
        return max([_longest_word(self.header), *(_longest_line(cell) for cell in self.cells)])

    @property
    def floor(self) -> int:
        """The narrowest it gets without cutting: its longest line, or, wrapping, its
        longest word (a header always wraps at words). Never more than `content`."""
        cells = [_longest_line(c) if self.one_line else _longest_word(c) for c in self.cells]
        return max([_longest_word(self.header), *cells])

    def fitted(self, width: int) -> tuple[Text, list[Text]]:
        """Header and cells for `width` cells: nothing left that Rich would fold."""
        def cell(text: Text) -> Text:
            if not self.one_line:
                return cut_words(text, width)
            return Text("\n").join(middle_cut(line, width) for line in text.split("\n"))
        return cut_words(self.header, width), [cell(c) for c in self.cells]


def column_widths(columns: list[Column], room: int) -> list[int]:
    """Widths that add up to at most `room`: the natural ones if they fit; else headers
    wrapped, then cells wrapped between words, the room left going to the columns short of
    the next width, most to those furthest from it; else the widest values cut alike, the
    narrow ones (figures) kept."""
    tiers = [[c.floor for c in columns], [c.content for c in columns], [c.natural for c in columns]]
    if sum(tiers[-1]) <= room:
        return tiers[-1]
    for lower, upper in ((tiers[1], tiers[2]), (tiers[0], tiers[1])):
        if sum(lower) <= room:
            return _spread(lower, upper, room - sum(lower))
    floors = tiers[0]
    # The first column names the row: it is cut last, once no other value is above MIN_CUT.
    for start, keep in ((1, MIN_CUT), (0, MIN_CUT), (0, 1)):
        for level in range(max(floors), 0, -1):
            widths = floors[:start] + [min(f, max(level, min(f, keep))) for f in floors[start:]]
            if sum(widths) <= room:
                return _spread(widths, floors, room - sum(widths))
    return [1] * len(columns)


def _spread(widths: list[int], wanted: list[int], extra: int) -> list[int]:
    """`extra` cells shared among the columns below what they want, in proportion to the
    shortfall; what rounding leaves goes one cell each, left to right."""
    short = [w - have for have, w in zip(widths, wanted)]
    total = sum(short)
    if total <= extra:
        return list(wanted)
    grown = [have + extra * s // total for have, s in zip(widths, short)]
    left = extra - (sum(grown) - sum(widths))
    for index, want in enumerate(wanted):
        if left and grown[index] < want:
            grown[index] += 1
            left -= 1
    return grown


@dataclass
class FittedTable:
    """A table drawn at the width it is printed in (see `animllm_cli.output.table`): its
    title above it and its caption below, as lines that fit too. While it is too narrow for
    its values (each up to `whole` cells) to stay whole, the columns named in `below` leave
    it, in that order, for a line under it per row: "vision: aliases qwen-vl; profile small"."""
    title: Text | None
    caption: Text | None
    columns: list[Column]
    headed: bool
    below: tuple[str, ...] = ()
    whole: int = 16

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        width = options.max_width
        if self.title is not None:
            yield FittedText(self.title)
        kept, moved = self._split(width)
        yield self._table(kept, column_widths(kept, width - GAP * (len(kept) - 1)))
        for line in self._lines_under(moved):
            yield FittedText(line, hang=2)
        if self.caption is not None:
            yield FittedText(self.caption, hang=2)

    def _split(self, width: int) -> tuple[list[Column], list[Column]]:
        kept, moved = list(self.columns), []
        for name in self.below:
            if sum(min(c.floor, self.whole) for c in kept) + GAP * (len(kept) - 1) <= width:
                break
            column = next(c for c in kept if c.header.plain == name)
            kept.remove(column)
            moved.append(column)
        return kept, moved

    def _table(self, columns: list[Column], widths: list[int]) -> Any:
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD if self.headed else None, show_header=self.headed, show_edge=False,
                      header_style="bold", pad_edge=False, padding=(0, 1, 0, 0) if self.headed else (0, 1))
        fitted = [column.fitted(w) for column, w in zip(columns, widths)]
        for (header, _), w in zip(fitted, widths):
            table.add_column(header, width=w, overflow="ellipsis")
        for row in zip(*(cells for _, cells in fitted)):
            table.add_row(*row)
        return table

    def _lines_under(self, moved: list[Column]) -> list[Text]:
        """Per row, the values of the columns that left the table, after the row's first cell."""
        lines = []
        for index, key in enumerate(self.columns[0].cells):
            parts = [Text.assemble(f"{c.header.plain} ", c.cells[index]) for c in moved
                     if c.cells[index].plain not in ("", "-", "?")]
            if parts:
                lines.append(Text.assemble(Text(key.plain, style="bold"), ": ", Text("; ").join(parts)))
        return lines


@dataclass
class FittedText:
    """Lines of text wrapped between words at the width there is, `indent` cells in, and
    what a line wraps onto `hang` cells further; a word wider than that is cut in the middle."""
    text: Text
    indent: int = 0
    hang: int = 0

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        room = max(1, options.max_width - self.indent - self.hang)
        for line in self.text.split("\n"):
            for number, part in enumerate(cut_words(line, room).wrap(console, room)):
                yield Text.assemble(" " * (self.indent + (self.hang if number else 0)), part)

"""The documentation as the docs tests read it: README.md and docs/*.md, their fenced code
blocks (with the `<!-- not run: WHY -->` marker that may stand just before one), their
prose, and the anchors GitHub gives their headings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.support.helpers import REPO_ROOT

DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<why>.*?)\s*-->")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int            # of the opening fence, counted from 1
    language: str        # the info string's first word, "" for none
    lines: tuple[str, ...]
    not_run: str | None  # why the block is not run, from the marker just before it

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def split(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown file, and its lines outside them (blank inside)."""
    lines = path.read_text().split("\n")
    blocks: list[Block] = []
    prose = list(lines)
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = next((i for i in range(index + 1, len(lines)) if closing.match(lines[i])), len(lines))
        body = tuple(line[indent:] if line[:indent].strip() == "" else line for line in lines[index + 1:end])
        marker = NOT_RUN.fullmatch(lines[index - 1].strip()) if index else None
        words = opening["info"].split()
        blocks.append(Block(path, index + 1, words[0] if words else "", body, marker["why"] if marker else None))
        prose[index:end + 1] = [""] * (min(end, len(lines) - 1) + 1 - index)
        index = end + 1
    return blocks, prose


def anchors(path: Path) -> set[str]:
    """The anchors GitHub makes of a file's headings: lower case, markup and punctuation
    dropped, spaces as hyphens, a repeated one numbered (`-1`, `-2`)."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in split(path)[1]:
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading[1]).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found

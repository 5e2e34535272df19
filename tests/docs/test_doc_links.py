"""Every relative link in README.md and docs/*.md resolves: the file (or folder) it names
exists, and its anchor names a heading of that file, as GitHub spells heading anchors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs.doc_files import DOC_FILES, anchors, split
from tests.support.helpers import REPO_ROOT, write

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
ABSOLUTE = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)   # http:, https:, mailto: ...


def broken_links(path: Path) -> list[str]:
    """`file:line: target (why)` for each relative link of `path` that does not resolve."""
    problems = []
    for number, line in enumerate(split(path)[1], start=1):
        for match in LINK.finditer(re.sub(r"`[^`]*`", "", line)):   # code spans hold no links
            target = match["target"]
            if ABSOLUTE.match(target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                problems.append(f"{path.name}:{number}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(f"{path.name}:{number}: {target} (no heading with that anchor in {linked.name})")
    return problems


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_the_readme_links_to_every_docs_file() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert [doc.name for doc in DOC_FILES[1:] if f"](docs/{doc.name}" not in readme] == []


def test_a_missing_file_or_anchor_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "other.md", "# Other\n\n## Two words\n")
    page = write(tmp_path / "page.md", """
        # Page
        [ok](other.md#two-words) [self](#page) [web](https://example.com/x) `[code](nowhere.md)`
        [gone](missing.md) [bad anchor](other.md#three-words) [bad self](#nothing)

        ```
        [in a block](nowhere.md)
        ```
    """)
    assert broken_links(page) == [
        "page.md:3: missing.md (no such file)",
        "page.md:3: other.md#three-words (no heading with that anchor in other.md)",
        "page.md:3: #nothing (no heading with that anchor in page.md)",
    ]


def test_anchors_are_spelt_as_github_spells_them(tmp_path: Path) -> None:
    page = write(tmp_path / "p.md", """
        ## `animllm serve` and [the pool](x.md)
        ## What animllm writes, and the engine's environment
        ## Notes
        ## Notes
    """)
    assert anchors(page) == {"animllm-serve-and-the-pool", "what-animllm-writes-and-the-engines-environment",
                             "notes", "notes-1"}

"""`Output`: the one place that makes consoles, spinners, progress bars and live views, and
that picks JSON or the human rendering of a result."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel

from animllm_cli.output import Output
from tests.support.helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "animllm_cli"
# Rich's modules that draw on a terminal: only output.py may use them.
DRAWING_MODULES = {"rich.console", "rich.live", "rich.progress", "rich.status"}


def _rich_drawing_uses(path: Path) -> list[str]:
    source = path.read_text()
    found = [f"{path.name}:{source.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
             for m in re.finditer(r"\b(Console|Live)\(", source)]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in DRAWING_MODULES:
            found.append(f"{path.name}:{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"{path.name}:{node.lineno}: import {a.name}" for a in node.names if a.name in DRAWING_MODULES]
    return found


def test_only_output_makes_consoles_progress_bars_and_live_views() -> None:
    # A `Progress(` of Rich needs an import from rich.progress, which is what is looked for:
    # the engine's own `Progress` record (a phase report) is not Rich's.
    offenders = [use for path in sorted(PACKAGE.rglob("*.py")) if path != PACKAGE / "output.py"
                 for use in _rich_drawing_uses(path)]
    assert offenders == [], "draw through animllm_cli.output.Output instead:\n" + "\n".join(offenders)


def test_the_check_sees_what_it_forbids(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from rich.progress import Progress\nfrom rich.console import Console\nConsole(stderr=True)\n")
    assert len(_rich_drawing_uses(sample)) == 3


def test_status_when_quiet_prints_nothing_even_in_a_terminal(capsys, monkeypatch) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # Rich takes stderr for a terminal: the spinner path
    with Output(quiet=True).status("switching to b"):
        pass
    assert capsys.readouterr() == ("", "")


def test_status_in_a_terminal_draws_a_spinner_on_stderr(capsys, monkeypatch) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    with Output().status("switching to b"):
        pass
    captured = capsys.readouterr()
    assert captured.out == "" and "switching to b" in captured.err


def test_status_outside_a_terminal_says_it_once_as_a_line(capsys) -> None:
    with Output().status("switching to b"):
        pass
    assert capsys.readouterr() == ("", "switching to b\n")


def test_progress_is_off_when_quiet() -> None:
    assert Output(quiet=True).progress().disable
    assert not Output().progress().disable


def test_live_view_draws_on_stdout(capsys) -> None:
    from rich.text import Text

    with Output(quiet=True).live(Text("")) as live:  # an answer is data: quiet does not hide it
        live.update(Text("the answer"))
    captured = capsys.readouterr()
    assert "the answer" in captured.out and captured.err == ""


@dataclass
class _Record:
    name: str
    size: int


class _Model(BaseModel):
    name: str
    path: Path


class _Typed:
    def to_json(self) -> dict:
        return {"own": "form"}


@pytest.mark.parametrize("data, expected", [
    (_Record("a", 1), {"name": "a", "size": 1}),
    (_Model(name="a", path=Path("/x")), {"name": "a", "path": "/x"}),
    (_Typed(), {"own": "form"}),
    ({"plain": [1, 2]}, {"plain": [1, 2]}),
])
def test_result_as_json_serializes_typed_data(capsys, data, expected) -> None:
    rendered = []
    Output(quiet=True).result(data, rendered.append, json=True)
    assert json.loads(capsys.readouterr().out) == expected and rendered == []


def test_result_for_people_calls_the_renderer_with_the_data(capsys) -> None:
    rendered = []
    record = _Record("a", 1)
    Output().result(record, rendered.append, json=False)
    assert rendered == [record] and capsys.readouterr() == ("", "")


MARKUP = "[bold]x[/] :smile:"


def test_messages_are_literal_never_markup_or_emoji(capsys) -> None:
    out = Output(verbose=1)
    out.info(f"info {MARKUP}")
    out.debug(f"debug {MARKUP}")
    out.warn(f"warn {MARKUP}")
    out.error(f"error {MARKUP}", hint=f"hint {MARKUP}")
    assert capsys.readouterr().err.splitlines() == [
        f"info {MARKUP}", f"debug {MARKUP}", f"warning: warn {MARKUP}", f"error: error {MARKUP}", f"hint: hint {MARKUP}"]


def test_tables_take_cells_headers_titles_and_captions_literally(capsys) -> None:
    from animllm_cli.output import table

    Output().show(table(f"title {MARKUP}", ["name", f"column {MARKUP}"], [[f"cell {MARKUP}", None], [3, 0.5]],
                        caption=f"caption {MARKUP}"))
    shown = capsys.readouterr().out
    for text in (f"title {MARKUP}", f"column {MARKUP}", f"cell {MARKUP}", f"caption {MARKUP}", "3", "0.5"):
        assert text in shown, shown


def test_styled_text_is_built_never_parsed() -> None:
    from animllm_cli.output import joined, styled

    line = joined(styled("1/6", "bold"), f" {MARKUP}")
    assert line.plain == f"1/6 {MARKUP}"
    assert [(span.start, span.end, str(span.style)) for span in line.spans] == [(0, 3, "bold")]
    assert styled(line, "dim").plain == line.plain and str(styled(line, "dim").style) == "dim"


def test_progress_descriptions_are_literal() -> None:
    with Output().progress() as progress:
        progress.add_task(f"pulling {MARKUP}", total=1)
        assert progress.columns[0].render(progress.tasks[0]).plain == f"pulling {MARKUP}"

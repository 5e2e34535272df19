"""`bench --plot` and `bench-compare` from saved runs: files that are what their extension
says, two runs side by side with B/A, and clear refusals."""

from __future__ import annotations

import json
import struct
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from tests.support.saved_runs import saved_run
from tests.support.helpers import run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png_and_an_svg(tmp_path: Path) -> None:
    saved = saved_run(tmp_path / "run.json")
    for name in ("sweep.png", "sweep.svg"):
        result = run_cli("bench-compare", str(saved), str(saved), "--plot", str(tmp_path / name))
        assert result.exit_code == 0, result.stderr
    png = (tmp_path / "sweep.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk: a real image, three panel rows
    assert width >= 800 and height >= 1000
    svg = ElementTree.parse(tmp_path / "sweep.svg").getroot()
    assert svg.tag.endswith("svg")
    text = (tmp_path / "sweep.svg").read_text()
    for title in ("Time to first token", "Time per output token", "Output throughput", "Switches, phase by phase"):
        assert title in text


def test_a_run_without_switches_has_no_switch_panel(tmp_path: Path) -> None:
    from animllm_cli.bench.plot import write_plot

    saved = json.loads(saved_run(tmp_path / "run.json", switches=False, rate=True).read_text())
    write_plot(tmp_path / "rate.svg", [("run", saved)])
    text = (tmp_path / "rate.svg").read_text()
    assert "request rate (req/s)" in text and "Switches, phase by phase" not in text


def test_compare_side_by_side_with_ratios(tmp_path: Path) -> None:
    a = saved_run(tmp_path / "a.json")
    b = saved_run(tmp_path / "b.json", slower=2.0, levels=(1, 4, 16))
    result = run_cli("bench-compare", str(a), str(b), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [level["level"] for level in data["levels"]] == ["concurrency 1", "concurrency 4", "concurrency 8",
                                                            "concurrency 16"]
    rows = {row["metric"]: row for row in data["levels"][0]["metrics"]}
    a_json, b_json = json.loads(a.read_text()), json.loads(b.read_text())
    ttft_a, ttft_b = (run["levels"][0]["summary"]["ttft_ms"]["median"] for run in (a_json, b_json))
    assert rows["TTFT median ms"]["a"] == ttft_a and rows["TTFT median ms"]["b"] == ttft_b
    assert rows["TTFT median ms"]["ratio"] == pytest.approx(ttft_b / ttft_a)
    only_a = {row["metric"]: row for row in data["levels"][2]["metrics"]}["completed"]
    assert only_a["a"] == 12 and only_a["b"] is None and only_a["ratio"] is None
    switch = {row["metric"]: row for row in data["switch"]}
    assert switch["switch load_s median"]["ratio"] == pytest.approx(2.0)
    assert data["notes"] == ["levels in one run only: concurrency 16, concurrency 8"]

    human = run_cli("bench-compare", str(a), str(b))
    assert "B/A" in human.stdout and "concurrency 16" in human.stdout
    assert "note: levels in one run only" in human.stderr


def test_compare_refuses_what_is_not_a_saved_run(tmp_path: Path) -> None:
    good = saved_run(tmp_path / "good.json")
    (tmp_path / "other.json").write_text('{"checks": []}')
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "future.json").write_text(good.read_text().replace('"schema_version": 1', '"schema_version": 9'))
    for bad, says in (("other.json", "not a bench result"), ("broken.json", "not JSON"), ("future.json", "schema_version 9"),
                      ("absent.json", "absent.json"), (".", "Is a directory")):
        result = run_cli("bench-compare", str(good), str(tmp_path / bad))
        assert result.exit_code == 2 and says in result.stderr, (bad, result.stderr)


@pytest.mark.parametrize("extra, says", [(["--concurrency", "4"], "No such option: --concurrency"),
                                         (["--goodput", "ttft:1"], "No such option: --goodput"),
                                         (["tiny"], "unexpected extra argument(s) (tiny)")])
def test_compare_runs_nothing_so_run_options_are_refused(tmp_path: Path, extra: list[str], says: str) -> None:
    saved = saved_run(tmp_path / "run.json")
    result = run_cli("bench-compare", str(saved), str(saved), *extra)
    assert result.exit_code == 2 and says in result.stderr, result.stderr


@pytest.mark.parametrize("name, says", [("plot.jpg", ".png or .svg"), ("missing/plot.png", "does not exist")])
def test_plot_path_refused_before_anything_runs(tmp_path: Path, name: str, says: str) -> None:
    # No gateway runs here: a refusal that came after the sweep would say so instead.
    result = run_cli("bench", "--plot", str(tmp_path / name))
    assert result.exit_code == 2 and says in result.stderr


def test_without_matplotlib_the_extra_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    saved = saved_run(tmp_path / "run.json")
    result = run_cli("bench-compare", str(saved), str(saved), "--plot", str(tmp_path / "p.png"))
    assert result.exit_code == 1
    assert "matplotlib" in result.stderr and "animllm-cli[plot]" in result.stderr
    assert not (tmp_path / "p.png").exists()


def test_compare_notes_every_difference_in_the_run_conditions(tmp_path: Path) -> None:
    a = saved_run(tmp_path / "a.json", rate=True, levels=(1, 2))
    b = saved_run(tmp_path / "b.json", rate=True, levels=(1, 2), burstiness=0.5, requests=8,
                  endpoint="/v1/chat/completions", prompts="studio.jsonl",
                  goodput_slo={"ttft_ms": 500.0, "tpot_ms": None, "e2el_ms": None})
    data = json.loads(run_cli("bench-compare", str(a), str(b), "--json").stdout)
    assert [level["level"] for level in data["levels"]] == ["1 req/s", "2 req/s"]  # matched by rate all the same
    assert data["notes"] == ["endpoint differs: /v1/completions vs /v1/chat/completions",
                             "prompts differs: random vs studio.jsonl",
                             "goodput SLO differs: none vs TTFT <= 500 ms",
                             "burstiness differs: 1 vs 0.5",
                             "requests per level differ: 12 vs 8"]


def test_compare_two_mixes_model_by_model(tmp_path: Path) -> None:
    from tests.support.saved_runs import saved_mix

    a, b = saved_mix(tmp_path / "a.json"), saved_mix(tmp_path / "b.json", slower=2.0, request_rate=4.0)
    result = run_cli("bench-compare", str(a), str(b), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [level["level"] for level in data["levels"]] == ["model a", "model b", "all models"]
    assert data["a_model"] == data["b_model"] == "a:3,b:1"
    rows = {row["metric"]: row for row in data["levels"][0]["metrics"]}
    assert rows["TTFT median ms"]["ratio"] == pytest.approx(2.0, rel=0.3)
    assert {row["metric"]: row for row in data["switch"]}["switch load_s median"]["ratio"] == pytest.approx(2.0)
    assert data["notes"] == ["request_rate differs: 2 vs 4"]
    human = run_cli("bench-compare", str(a), str(b))
    assert "model a" in human.stdout and "note: request_rate differs" in human.stderr


def test_compare_refuses_a_mix_against_a_run_and_a_plot_of_mixes(tmp_path: Path) -> None:
    from tests.support.saved_runs import saved_mix

    mix, run = saved_mix(tmp_path / "mix.json"), saved_run(tmp_path / "run.json")
    result = run_cli("bench-compare", str(mix), str(run))
    assert result.exit_code == 2 and "a bench-mix result" in result.stderr and "a bench run" in result.stderr
    plotted = run_cli("bench-compare", str(mix), str(mix), "--plot", str(tmp_path / "mix.svg"))
    assert plotted.exit_code == 2 and "--plot" in plotted.stderr and not (tmp_path / "mix.svg").exists()


@pytest.mark.parametrize("levels, scale", [((1, 4), "log"), ((1, 2, 4, 8), "log"), ((1, 2, 3), "linear")])
def test_plot_ticks_sit_at_the_measured_levels(tmp_path: Path, levels: tuple[int, ...], scale: str) -> None:
    from animllm_cli.bench.plot import draw

    figure = draw([("run", json.loads(saved_run(tmp_path / "run.json", levels=levels, switches=False).read_text()))])
    for axes in figure.axes:
        assert list(axes.get_xticks()) == list(levels) and axes.get_xscale() == scale
        assert [label.get_text() for label in axes.get_xticklabels()] == [str(level) for level in levels]
        assert len(axes.get_xticks(minor=True)) == 0

"""bench's spellings from before bench-mix, bench-compare and `--save`, kept for one release
(docs/benchmarks.md): each is turned into today's with a warning on stderr; `-c`, which is the
root's --config alone now, and a word after `--json` that may be a file or a model are
refused (exit 2) with the new spelling named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from animllm_cli.cli.bench_old_spellings import old_spellings
from animllm_cli.errors import UsageError
from tests.support.gateways import fake_gateway_config
from tests.support.helpers import run_cli
from tests.support.saved_runs import saved_run


@pytest.mark.parametrize("args, command, rewritten, warned", [
    (["tiny", "--json"], "bench", ["tiny", "--json"], 0),
    (["--json", "-n", "2"], "bench", ["--json", "-n", "2"], 0),
    (["tiny", "--json", "-"], "bench", ["tiny", "--json"], 1),
    (["--json=-"], "bench", ["--json"], 1),
    (["--json", "runs/a.json", "-n", "2"], "bench", ["--save", "runs/a.json", "-n", "2"], 1),
    (["--json=runs/a"], "bench", ["--save", "runs/a"], 1),
    (["--request-rate", "2", "--mix", "a,b"], "bench-mix", ["a,b", "--request-rate", "2"], 1),
    (["--mix=a:3,b", "--json", "-"], "bench-mix", ["a:3,b", "--json"], 2),
    (["--compare", "a.json", "b.json", "--plot", "p.svg"], "bench-compare", ["a.json", "b.json", "--plot", "p.svg"], 1),
    (["--", "--json", "-"], "bench", ["--", "--json", "-"], 0),
])
def test_old_spellings_become_new_ones(args: list[str], command: str, rewritten: list[str], warned: int) -> None:
    name, new_args, notes = old_spellings(args)
    assert (name, new_args, len(notes)) == (command, rewritten, warned)
    assert all("next release" in note for note in notes)


@pytest.mark.parametrize("args, says", [(["-c", "1,4"], "--concurrency"), (["-c4"], "--concurrency"),
                                        (["--json", "tiny"], "--save tiny")])
def test_what_could_mean_two_things_is_refused(args: list[str], says: str) -> None:
    with pytest.raises(UsageError) as refused:
        old_spellings(args)
    assert says in f"{refused.value.message} {refused.value.hint}"


def test_bench_c_is_a_usage_error_naming_concurrency() -> None:
    result = run_cli("bench", "-c", "1,4", "-n", "2")
    assert result.exit_code == 2 and "-c is --config now" in result.stderr and "--concurrency 1,4" in result.stderr


def test_old_compare_and_json_spellings_still_work_with_a_warning(tmp_path: Path) -> None:
    a, b = saved_run(tmp_path / "a.json"), saved_run(tmp_path / "b.json", slower=2.0)
    new = run_cli("bench-compare", str(a), str(b), "--json", "--save", str(tmp_path / "new.json"))
    assert new.exit_code == 0, new.stderr
    assert json.loads((tmp_path / "new.json").read_text()) == json.loads(new.stdout)  # --save: the same JSON

    on_stdout = run_cli("bench", "--compare", str(a), str(b), "--json", "-")
    assert on_stdout.exit_code == 0, on_stdout.stderr
    assert on_stdout.stdout == new.stdout
    assert "`bench --compare A B` is `bench-compare A B` now" in on_stdout.stderr
    assert "`--json -` is `--json` now" in on_stdout.stderr

    to_file = run_cli("bench", "--compare", str(a), str(b), "--json", str(tmp_path / "old.json"))
    assert to_file.exit_code == 0, to_file.stderr
    assert (tmp_path / "old.json").read_text() == (tmp_path / "new.json").read_text()
    assert "B/A" in to_file.stdout and f"is `--save {tmp_path / 'old.json'}` now" in to_file.stderr


def test_old_mix_spelling_reaches_bench_mix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANIMLLM_CONFIG", str(fake_gateway_config(tmp_path)))
    result = run_cli("bench", "--mix", "a:1")  # refused by bench-mix's own check, before anything is sent
    assert result.exit_code == 2 and "at least two models" in result.stderr
    assert "`bench --mix MODELS` is `bench-mix MODELS` now" in result.stderr


def test_bench_json_word_that_may_be_a_model_is_refused() -> None:
    result = run_cli("bench", "--json", "tiny")
    assert result.exit_code == 2 and "--save tiny" in result.stderr and "animllm bench tiny --json" in result.stderr

"""`bench --startup` on the fake vLLM (its log walks vLLM's markers): the phases of each
start, the JSON, the estimate `plan` shows afterwards, and the refusals; and the standby
the gateway keeps for its next start (engine/standby.py), on the fake's real processes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import psutil

from animllm_cli.config import load_config
from animllm_cli.engine.standby import STANDBY_MARK, Keeper, Standby
from animllm_cli.engine.supervisor import launch
from tests.cli.test_json_schemas import assert_matches_docs
from tests.support.fake_engines import fake_config
from tests.support.helpers import run_cli, run_json, write


def _plan(config: str) -> dict:
    """plan's JSON for the fake model (its exit is 1: the fake's weights are nowhere, so its fit is unknown)."""
    planned = json.loads(run_cli("plan", "fake", "--vram", "16", "--json", "--config", config).stdout)
    if planned["models"][0]["startup"] is not None:
        assert_matches_docs("plan", planned, not_exercised={"$.shares.<model>", "$.remote[]"})
    return planned["models"][0]


def test_each_start_is_broken_into_the_phases_its_log_marked_then_ready_and_the_first_answer(tmp_path: Path) -> None:
    config = str(fake_config(tmp_path, "ok"))
    result = run_json("bench", "--startup", "fake", "--runs", "2", "--launch", "both", "--cache", "warm", "--json",
                      "--config", config)
    assert_matches_docs("bench --startup", result)
    assert [(run["cache"], run["launched_by"]) for run in result["runs"]] == [("warm", "fresh"), ("warm", "standby")] * 2
    for run in result["runs"]:
        names = [phase["name"] for phase in run["phases"]]
        assert names[0] == "starting" and {"resolving model", "loading weights", "starting server"} <= set(names)
        assert abs(sum(phase["took_s"] for phase in run["phases"]) - run["ready_s"]) < 0.01
        assert run["first_answer_s"] > 0 and run["total_s"] == round(run["ready_s"] + run["first_answer_s"], 3)
    assert result["answers_identical"] is True and json.loads(result["runs"][0]["answer"])
    summary = {(group["cache"], group["launched_by"]): {p["phase"]: p for p in group["phases"]}
               for group in result["summary"]}
    fresh = summary[("warm", "fresh")]
    assert fresh["ready"]["runs"] == 2 and fresh["ready"]["min_s"] <= fresh["ready"]["median_s"] <= fresh["ready"]["max_s"]
    assert "$VLLM_API_KEY" in result["command"] or "VLLM_API_KEY" not in result["command"]  # never the key itself

    planned = _plan(config)
    assert planned["startup"]["to_first_answer_s"] == summary[("warm", "fresh")]["total"]["median_s"]
    assert planned["startup"]["runs"] == 2 and planned["startup"]["launched_by"] == "fresh"
    table = run_cli("plan", "fake", "--vram", "16", "--config", config)
    assert "cold start s" in table.stdout


def test_the_table_and_a_changed_command_that_plan_no_longer_takes_the_estimate_of(tmp_path: Path) -> None:
    config = fake_config(tmp_path, "ok")
    plot = tmp_path / "startup.png"
    shown = run_cli("bench", "--startup", "fake", "--runs", "1", "--plot", str(plot), "--config", str(config))
    assert shown.exit_code == 0, shown.stderr
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert "Start-up of fake" in shown.stdout and "loading weights" in shown.stdout and "first answer" in shown.stdout
    assert "identical in every run" in shown.stderr and "kept for `animllm plan`" in shown.stderr
    config.write_text(config.read_text().replace("max_model_len: 1024", "max_model_len: 512"))
    planned = _plan(str(config))
    assert planned["startup"] is None
    assert any("another engine command" in note for note in planned["notes"])


def test_what_startup_does_not_measure_is_refused_by_name(tmp_path: Path) -> None:
    config = str(fake_config(tmp_path, "ok"))
    mixed = run_cli("bench", "--startup", "fake", "--concurrency", "4", "--config", config)
    assert mixed.exit_code == 2 and "--concurrency" in mixed.stderr
    wrong = run_cli("bench", "--startup", "fake", "--cache", "lukewarm", "--config", config)
    assert wrong.exit_code == 2 and "--cache 'lukewarm'" in wrong.stderr
    remote = write(tmp_path / "remote.yaml", """
        inherit_defaults: false
        models: {far: {upstream: {urls: "http://127.0.0.1:9"}}}
    """)
    refused = run_cli("bench", "--startup", "far", "--config", str(remote))
    assert refused.exit_code == 2 and "served elsewhere" in refused.stderr


def _keeper_with_a_standby(tmp_path: Path):
    """The fake's config, and a keeper holding a standby made for its engine's command."""
    loaded = load_config(fake_config(tmp_path, "ok"))
    keeper = Keeper(enabled=True, grace_s=2)
    keeper.refill(launch(loaded, "fake", log_dir=tmp_path / "logs").command)
    assert keeper.waiting is not None
    return loaded, keeper, keeper.waiting


def test_a_standby_runs_the_engine_it_fits_in_its_own_process_and_answers(tmp_path: Path) -> None:
    loaded, keeper, standby = _keeper_with_a_standby(tmp_path)
    assert standby.imported(timeout_s=None)
    engine = launch(loaded, "fake", log_dir=tmp_path / "logs")  # another launch: its own key and port
    engine.standby = keeper.take(engine.command)
    assert engine.standby is standby and keeper.waiting is None
    with engine:
        report = engine.start()
        assert report.launched_by == "standby" and engine.pid == standby.launched.proc.pid
        assert psutil.Process(engine.pid).environ().get(STANDBY_MARK) == "1"  # it began as the standby
        answer = httpx.post(f"{engine.base_url}/v1/completions", headers=engine.headers,
                            json={"model": "fake", "prompt": "hi", "max_tokens": 2})
        assert answer.status_code == 200
        without_key = httpx.post(f"{engine.base_url}/v1/completions", json={"model": "fake", "prompt": "hi"})
        assert without_key.status_code == 401  # the engine's own key, sent at activation, guards it
    assert not psutil.pid_exists(standby.launched.proc.pid) or \
        psutil.Process(standby.launched.proc.pid).status() == psutil.STATUS_ZOMBIE


def test_a_standby_that_does_not_fit_waits_for_a_start_it_fits_and_a_dead_one_is_replaced(tmp_path: Path) -> None:
    loaded, keeper, standby = _keeper_with_a_standby(tmp_path)
    engine = launch(loaded, "fake", log_dir=tmp_path / "logs")
    elsewhere = launch(loaded, "fake", log_dir=tmp_path / "logs", extra_env={"CUDA_VISIBLE_DEVICES": "1"})
    assert not standby.fits(elsewhere.command) and standby.fits(engine.command)
    assert keeper.take(elsewhere.command) is None and keeper.waiting is standby  # kept: other GPUs start plain
    keeper.refill(elsewhere.command)
    assert keeper.waiting is standby  # one usable standby at a time
    standby.launched.proc.kill()
    standby.launched.proc.wait()
    keeper.refill(engine.command)
    assert keeper.waiting is not None and keeper.waiting is not standby  # the dead one replaced
    replacement = keeper.waiting
    keeper.close()
    replacement.launched.proc.wait(timeout=10)  # ended with the keeper
    keeper.refill(engine.command)
    assert keeper.waiting is None  # none made after close()
    assert Keeper(enabled=False, grace_s=2).refill(engine.command) is None


def test_a_standby_handed_to_an_engine_that_never_starts_is_ended_with_it(tmp_path: Path) -> None:
    loaded, keeper, standby = _keeper_with_a_standby(tmp_path)
    engine = launch(loaded, "fake", log_dir=tmp_path / "logs")
    engine.standby = keeper.take(engine.command)
    engine.stop()  # a shutdown before the start thread ran
    assert standby.launched.proc.wait(timeout=10) is not None


def test_a_standby_whose_import_fails_says_so_and_fits_nothing(tmp_path: Path) -> None:
    loaded = load_config(fake_config(tmp_path, "ok"))
    engine = launch(loaded, "fake", log_dir=tmp_path / "logs")
    argv = list(engine.command.argv)
    argv[argv.index("-m") + 1] = "tests.fakes.no_such_module"
    standby = Standby(dataclasses.replace(engine.command, argv=argv), grace_s=2)
    try:
        assert standby.imported(timeout_s=None) is False
        assert "ModuleNotFoundError" in standby.failure and not standby.fits(engine.command)
    finally:
        standby.discard()
    engine.standby = Standby(dataclasses.replace(engine.command, argv=argv), grace_s=2)
    engine.standby.imported(timeout_s=None)  # handed an engine after its import failed: the start is a plain one
    with engine:
        assert engine.start().launched_by == "fresh"


def test_startups_options_need_startup(tmp_path: Path) -> None:
    refused = run_cli("bench", "fake", "--runs", "2", "--config", str(fake_config(tmp_path, "ok")))
    assert refused.exit_code == 2 and "add --startup" in refused.stderr


def test_a_standby_that_died_before_its_engine_came_gives_way_to_a_plain_start(tmp_path: Path) -> None:
    loaded = load_config(fake_config(tmp_path, "ok"))
    engine = launch(loaded, "fake", log_dir=tmp_path / "logs")
    engine.standby = Standby(engine.command, grace_s=2)
    engine.standby.imported(timeout_s=None)
    engine.standby.launched.proc.kill()
    engine.standby.launched.proc.wait()
    with engine:
        assert engine.start().launched_by == "fresh"
        assert httpx.get(f"{engine.base_url}/health").status_code == 200

"""The doctor's engine-flags row: every configured model's engine command judged against the
flag table of the vLLM release installed in the engine's Python."""

from __future__ import annotations

from pathlib import Path

from animllm_cli.engine.vllm_releases import tables
from tests.doctor.conftest import GOOD_ENV
from tests.doctor.test_doctor import doctor, status
from tests.support.helpers import write


def _row(*args: str) -> dict:
    return status(doctor("--only", "engine-flags", *args)[1], "engine-flags")


def test_the_shipped_models_pass_on_the_installed_release(nvml, engine_env) -> None:
    row = _row()
    assert row["status"] == "PASS", row
    assert f"vLLM {GOOD_ENV['packages']['vllm']}" in row["detail"] and "4 model(s)" in row["detail"]


def test_a_flag_the_installed_release_lacks_fails_naming_model_flag_and_first_release(nvml, engine_env,
                                                                                      tmp_path: Path) -> None:
    old, new = tables().release("0.9.0"), tables().release(tables().releases[-1])
    option = next(o for o in sorted(set(new.options) - set(old.options))
                  if new.options[o].takes == "none" and not o.startswith("--no-") and not new.options[o].hidden)
    first = tables().whence(option, "0.9.0").removeprefix("first in ")
    config = write(tmp_path / "c.yaml", f"models:\n  coder:\n    extra_args: {{{option[2:]}: true}}\n")
    engine_env(packages={"torch": "2.7.0+cu128", "vllm": "0.9.0"})
    row = _row("--config", str(config))
    assert row["status"] == "FAIL"
    assert f"models.coder.extra_args.{option[2:]}: vLLM 0.9.0 has no {option} (first in {first})" in row["detail"]
    assert "config show" in row["fix"]
    engine_env(packages={"torch": "2.7.0+cu128", "vllm": first})
    assert _row("--config", str(config))["status"] == "PASS"


def test_a_release_outside_the_tables_warns_and_no_vllm_skips(nvml, engine_env) -> None:
    engine_env(packages={"torch": "2.7.0+cu128", "vllm": "99.0.0"})
    row = _row()
    assert row["status"] == "WARN" and "newer than the releases read" in row["detail"]
    engine_env(packages={"torch": "2.7.0+cu128"})
    assert _row()["status"] == "SKIP"

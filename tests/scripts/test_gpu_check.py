"""scripts/gpu_check.py, the prepared check for a real GPU, run here against the fake
NVML (stand-ins that hold nothing): its flow and its checks work, so that on a GPU only the
driver's answers can differ."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.support.helpers import REPO_ROOT


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    return gpu_check


def test_the_pool_check_passes_where_the_card_behaves_as_the_fake_nvml_assumes(tmp_path: Path) -> None:
    gpu_check = load_gpu_check()
    result = gpu_check.run_pool_check(tmp_path, FakeNvml([FakeGpu(engine_bytes="share")]), allocate=False)
    assert result["checks"] and all(result["checks"].values()), result
    assert result["third"]["evicted"] == ["b"]


def test_the_sleep_cycle_is_skipped_where_engines_cannot_sleep(tmp_path) -> None:
    """Here: no NVIDIA GPU, and the CPU build of vLLM. Nothing is started, and the check
    says why rather than failing."""
    result = load_gpu_check().run_sleep_check(tmp_path)
    assert result["checks"] == {} and result["skipped"]

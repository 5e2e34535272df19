"""NVML's utilisation rates in the probe: read where the driver reports them, None where
it answers NOT_SUPPORTED (some vGPUs, WSL), never a failed probe."""

from __future__ import annotations

from animllm_cli.gpu.nvml import probe
from tests.fakes.nvml import FakeGpu, FakeNvml


def test_the_probe_reads_gpu_and_memory_utilisation() -> None:
    (gpu,) = probe(FakeNvml([FakeGpu(utilization=(87, 41))])).gpus
    assert (gpu.utilization_gpu_percent, gpu.utilization_memory_percent) == (87, 41)


def test_a_driver_that_does_not_report_it_leaves_it_unknown() -> None:
    report = probe(FakeNvml([FakeGpu(utilization=None), FakeGpu(utilization=(5, 1))]))
    assert report.error is None
    assert [g.utilization_gpu_percent for g in report.gpus] == [None, 5]
    assert report.to_json()["gpus"][0]["utilization_memory_percent"] is None

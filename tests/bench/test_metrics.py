"""The metric arithmetic on hand-made timing traces, with answers worked out by hand."""

from __future__ import annotations

import pytest

from animllm_cli.bench.metrics import Sample, percentile, summarize


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(7.6)      # 4 + 0.6 * (10 - 4)
    assert percentile(values, 99) == pytest.approx(9.76)
    assert percentile([5.0], 99) == 5.0 and percentile([], 50) == 0.0


def test_tpot_is_decode_time_over_tokens_after_the_first() -> None:
    sample = Sample(ok=True, start=0, latency=1.0, ttft=0.1, output_tokens=10)
    assert sample.tpot == pytest.approx(0.1)                 # (1.0 - 0.1) / 9
    assert Sample(ok=True, start=0, latency=1.0, ttft=0.1, output_tokens=1).tpot is None


def test_summary_of_a_trace() -> None:
    samples = [
        Sample(ok=True, start=0, latency=0.5, ttft=0.1, itl=[0.1, 0.1, 0.2], prompt_tokens=10, output_tokens=5),
        Sample(ok=True, start=0, latency=1.1, ttft=0.3, itl=[0.2, 0.2, 0.4], prompt_tokens=10, output_tokens=5),
        Sample(ok=False, start=0, latency=0.2, error="HTTP 503: busy"),
    ]
    s = summarize(samples, duration_s=2.0)
    assert (s.completed, s.failed, s.errors) == (2, 1, ["HTTP 503: busy"])
    assert s.request_throughput == 1.0
    assert s.output_throughput == 5.0                    # 10 tokens over 2 s
    assert s.total_token_throughput == 15.0              # (20 + 10) / 2
    assert s.ttft_ms.mean == pytest.approx(200) and s.ttft_ms.median == pytest.approx(200)
    assert s.tpot_ms.median == pytest.approx(150)     # 0.1 and 0.2 per token
    assert s.itl_ms.median == pytest.approx(200)      # pooled: .1 .1 .2 .2 .2 .4
    assert s.itl_ms.p90 == pytest.approx(300)         # 0.2 + 0.5 * (0.4 - 0.2)
    assert s.e2el_ms.p99 == pytest.approx(500 + 0.99 * 600)


def test_failed_requests_do_not_count_in_the_latencies() -> None:
    s = summarize([Sample(ok=False, start=0, latency=9.0, ttft=5.0, output_tokens=3)], 1.0)
    assert s.completed == 0 and s.e2el_ms.median == 0.0 and s.output_tokens == 0


def test_peak_vram_is_the_highest_sample_over_the_level() -> None:
    from animllm_cli.bench.vram import PeakVram
    from animllm_cli.units import GIB
    from tests.fakes.nvml import FakeGpu, FakeNvml
    from tests.support.waiting import wait_until

    class CountedNvml(FakeNvml):
        probes = 0

        def nvmlInit(self) -> None:  # once per sample
            self.probes += 1
            super().nvmlInit()

    gpus = [FakeGpu(used=1 * GIB), FakeGpu(used=1 * GIB)]
    nvml = CountedNvml(gpus)
    with PeakVram(nvml, every_s=0.01) as peak:
        for used in (3, 2):
            gpus[0].used = used * GIB
            begun_after = nvml.probes + 2  # the next probe may have read the card already
            wait_until(lambda: nvml.probes >= begun_after, 10, f"a sample with {used} GiB used")
    assert peak.bytes == 4 * GIB   # 3 GiB + 1 GiB, at the same sample
    with PeakVram(FakeNvml(missing=True)) as none:
        pass
    assert none.bytes is None

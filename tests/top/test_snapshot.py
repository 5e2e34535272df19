"""Figures out of the engines' metrics: tokens/s from two scrapes, the KV cache under
either of vLLM's names, and engines that expose nothing."""

from __future__ import annotations

import pytest

import time

from animllm_cli.wire import EngineStatus, GatewayProcess, StatusReport, SwitchReport, VramStatus
from animllm_cli.gpu.nvml import GpuReport
from animllm_cli.top.metrics import EngineMetrics, parse, tokens_per_s
from animllm_cli.top.snapshot import GatewayInfo, Scrape, snapshot

# As the gateway's /metrics serves them: its own families, then the engines' merged.
GATEWAY_OWN = "# TYPE animllm_in_flight gauge\nanimllm_in_flight 2.0\n# the engines' own metrics\n"


def engines_text(generated_a: float, generated_b: float) -> str:
    return GATEWAY_OWN + f"""# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="a"}} 3.0
vllm:num_requests_running{{engine="0",model_name="b"}} 0.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="a"}} 1.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="a"}} 0.25
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{model_name="b"}} 0.5
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{{engine="0",model_name="a"}} {generated_a}
vllm:generation_tokens_created{{engine="0",model_name="a"}} 1.7e9
vllm:generation_tokens_total{{model_name="b"}} {generated_b}
"""


def test_parse_reads_each_models_figures_under_either_kv_name() -> None:
    figures = parse(engines_text(1000, 50))
    assert figures["a"] == EngineMetrics(requests_running=3, requests_waiting=1, kv_cache_usage=0.25,
                                         generation_tokens=1000)
    assert figures["b"].kv_cache_usage == 0.5          # the name vLLM used before v1
    assert figures["b"].requests_waiting is None       # not exposed: unknown, not 0


def test_parse_adds_up_engine_cores_and_keeps_the_fullest_kv_cache() -> None:
    text = ('vllm:num_requests_running{engine="0",model_name="a"} 2\n'
            'vllm:num_requests_running{engine="1",model_name="a"} 3\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.2\n'
            'vllm:kv_cache_usage_perc{engine="1",model_name="a"} 0.7\n')
    assert parse(text)["a"].requests_running == 5 and parse(text)["a"].kv_cache_usage == 0.7


def test_parse_of_an_unreadable_exposition_gives_no_figures() -> None:
    assert parse("vllm:num_requests_running{model_name=\"a\" 3\n") == {}
    assert parse("") == {}


def test_tokens_per_s_is_the_counters_difference_over_the_gap() -> None:
    assert tokens_per_s(EngineMetrics(generation_tokens=1000), EngineMetrics(generation_tokens=1450), 1.5) == 300.0
    assert tokens_per_s(EngineMetrics(generation_tokens=10), EngineMetrics(generation_tokens=10), 1.0) == 0.0


def test_tokens_per_s_is_unknown_without_both_counters_or_after_a_restart() -> None:
    counted = EngineMetrics(generation_tokens=500)
    assert tokens_per_s(None, counted, 1.0) is None
    assert tokens_per_s(EngineMetrics(), counted, 1.0) is None
    assert tokens_per_s(counted, EngineMetrics(generation_tokens=20), 1.0) is None  # the counter went down
    assert tokens_per_s(counted, counted, 0.0) is None


def status(*models: str) -> StatusReport:
    engines = [EngineStatus(model=m, state="ready", gpus=[0], in_flight=1, waiting=2) for m in models]
    switch = SwitchReport(from_model=None, to_model=models[0], outcome="ok", total_s=3.2, finished_at=time.time())
    return StatusReport(gateway=GatewayProcess(pid=1, uptime_s=5.0), engine=engines[0], engines=engines,
                        queue_depth=2, in_flight=1, vram=VramStatus(), recent_switches=[switch])


def scrape(at: float, text: str, report: StatusReport | None) -> Scrape:
    gateway = GatewayInfo(url="http://127.0.0.1:8000", running=True, reachable=report is not None, pid=1)
    return Scrape(at, time.time(), GpuReport(error="no NVIDIA driver (NVML not found)"), gateway, report, parse(text))


def test_snapshot_measures_tokens_per_s_per_engine_and_none_for_an_engine_without_metrics() -> None:
    report = status("a", "b", "c")  # c: an engine whose /metrics did not answer
    first, second = scrape(100.0, engines_text(1000, 50), report), scrape(102.0, engines_text(1400, 50), report)
    shot = snapshot(second, first)
    rows = {e.model: e for e in shot.engines}
    assert rows["a"].generation_tokens_per_s == 200.0 and rows["a"].requests_running == 3
    assert rows["b"].generation_tokens_per_s == 0.0 and rows["b"].kv_cache_usage == 0.5
    assert rows["c"].generation_tokens_per_s is None and rows["c"].kv_cache_usage is None
    assert rows["c"].in_flight == 1 and rows["c"].waiting == 2  # the gateway's own counts still show
    assert shot.interval_s == 2.0 and shot.recent_switches[0].to_model == "a"
    assert snapshot(second).engines[0].generation_tokens_per_s is None  # one scrape: no rate yet


def test_snapshot_without_a_gateway_keeps_the_gpus() -> None:
    alone = scrape(1.0, "", None)
    alone.gateway = GatewayInfo(problem="no gateway is running")
    shot = snapshot(alone)
    assert shot.engines == [] and shot.gpu_error == "no NVIDIA driver (NVML not found)"
    assert shot.to_json()["gateway"]["problem"] == "no gateway is running"


def test_a_reader_that_fails_ends_the_view_with_the_reason_instead_of_freezing_it() -> None:
    from animllm_cli.errors import AnimllmError
    from animllm_cli.top.view import Sampler, run

    class Broken:
        closed = False

        def read(self):
            raise RuntimeError("boom")

        def close(self) -> None:
            self.closed = True

    reader = Broken()
    with pytest.raises(AnimllmError, match="boom"):
        run(Sampler(reader, 0.1), lambda shot: None, size=lambda: (80, 24))  # type: ignore[arg-type]
    assert reader.closed

"""One benchmark run of one model: warm-up, the levels, optional switch timing, with progress."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from animllm_cli.bench import loadgen
from animllm_cli.bench.arrivals import RampUp, send_offsets
from animllm_cli.bench.metrics import summarize
from animllm_cli.bench.results import BenchResult, LevelResult, SwitchRun, level_label
from animllm_cli.bench.slo import Slo
from animllm_cli.bench.workload import Workload
from animllm_cli.bench.vram import PeakVram
from animllm_cli.client.openai import ServerNotRunning
from animllm_cli.credentials import bearer
from animllm_cli.errors import AnimllmError
from animllm_cli.output import Output


@dataclass
class BenchPlan:
    url: str
    model: str
    levels: list[int]
    request_rates: list[float]          # arrivals at these rates, one level per rate (instead of `levels`)
    requests: int
    workload: Workload
    warmup: int
    switch_models: list[str] = field(default_factory=list)
    switch_rounds: int = 2
    api_key: str | None = None
    nvml_module: object | None = None  # tests hand in a fake NVML
    slo: Slo = field(default_factory=Slo)
    burstiness: float = 1.0
    ramp_up: RampUp | None = None       # one level whose rate climbs (instead of `levels`/`request_rates`)
    prompts_label: str = "random"
    seed: int = 0

    def runs(self) -> list[tuple[int | None, float | None]]:
        if self.ramp_up:
            return [(None, None)]
        return [(level, None) for level in self.levels] or [(None, rate) for rate in self.request_rates]


def session(plan_url: str, api_key: str | None) -> aiohttp.ClientSession:
    # Connections are kept and reused, as vLLM's benchmark does: a level measures the
    # server, not TCP handshakes.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=bearer(api_key),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))


async def warm_up(http: aiohttp.ClientSession, url: str, workload: Workload, models: list[str], out: Output) -> None:
    if not models:
        return
    out.info(f"warming up {', '.join(dict.fromkeys(models))} with {len(models)} request(s)")
    try:
        requests = await workload.requests(http, url, models, start=0, seed=0)
    except aiohttp.ClientConnectionError:
        raise ServerNotRunning(url) from None
    for request in requests:
        sample = await loadgen.one_request(http, url, request)
        if not sample.ok:
            raise AnimllmError(f"warm-up request to '{request.model}' failed: {sample.error}")


async def run_bench(plan: BenchPlan, out: Output) -> BenchResult:
    workload = plan.workload
    result = BenchResult(url=plan.url, model=plan.model, input_len=workload.input_len, output_len=workload.output_len,
                         endpoint=workload.endpoint, prompts=plan.prompts_label,
                         goodput_slo=asdict(plan.slo) if plan.slo else None)
    async with session(plan.url, plan.api_key) as http:
        await warm_up(http, plan.url, workload, [plan.model] * plan.warmup, out)
        with out.progress() as progress:
            for index, (concurrency, rate) in enumerate(plan.runs(), start=1):
                burstiness = plan.burstiness if concurrency is None else 1.0
                ramp_up = plan.ramp_up.describe() if plan.ramp_up else None
                # Each level its own prompts: a repeated one would be served from the prefix cache.
                level_seed = plan.seed * 1000 + index
                requests = await workload.requests(http, plan.url, [plan.model] * plan.requests,
                                                   start=plan.warmup + (index - 1) * plan.requests, seed=level_seed)
                offsets = None if concurrency else send_offsets(len(requests), rate, burstiness=plan.burstiness,
                                                                 ramp_up=plan.ramp_up, seed=level_seed)
                task = progress.add_task(level_label(concurrency, rate, ramp_up, burstiness), total=len(requests))
                with PeakVram(plan.nvml_module) as peak:
                    samples, duration = await loadgen.run_level(
                        http, plan.url, requests, concurrency=concurrency, offsets=offsets,
                        on_done=lambda _sample, task=task: progress.advance(task))
                result.levels.append(LevelResult(concurrency=concurrency, request_rate=rate,
                                                 summary=summarize(samples, duration, plan.slo), samples=samples,
                                                 vram_peak_bytes=peak.bytes, burstiness=burstiness, ramp_up=ramp_up))
    if plan.switch_models:
        result.switch = await asyncio.to_thread(_switches, plan, out)
    return result


def _switches(plan: BenchPlan, out: Output) -> SwitchRun:
    import httpx

    from animllm_cli.bench.switching import run_switches

    headers = bearer(plan.api_key)
    with httpx.Client(base_url=plan.url, headers=headers, timeout=httpx.Timeout(30, read=None)) as http:
        def done(report: dict[str, Any]) -> None:
            out.info(f"  switch {report.get('from_model')} -> {report['to_model']}: {report['total_s']:.2f}s, "
                     f"first token {report['first_token_s']:.3f}s")
        return run_switches(http, plan.switch_models, plan.switch_rounds, on_done=done)

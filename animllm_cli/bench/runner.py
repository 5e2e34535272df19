"""One benchmark run: warm-up, the levels, optional switch timing, with progress."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from animllm_cli.bench import loadgen
from animllm_cli.bench.metrics import summarize
from animllm_cli.bench.results import BenchResult, LevelResult, SwitchRun, level_label
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
    request_rates: list[float]          # Poisson arrivals, one level per rate (instead of `levels`)
    requests: int
    input_len: int
    output_len: int
    warmup: int
    switch_models: list[str] = field(default_factory=list)
    switch_rounds: int = 2
    api_key: str | None = None
    nvml_module: object | None = None  # tests hand in a fake NVML


async def run_bench(plan: BenchPlan, out: Output) -> BenchResult:
    headers = bearer(plan.api_key)
    result = BenchResult(url=plan.url, model=plan.model, input_len=plan.input_len, output_len=plan.output_len)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
        try:
            vocabulary = await loadgen.vocabulary_sample(session, plan.url, plan.model)
        except aiohttp.ClientConnectionError:
            raise ServerNotRunning(plan.url) from None
        prompt = loadgen.prompts(vocabulary, plan.input_len)
        level_seed = iter(range(1, 1000))

        def payloads():
            make = loadgen.prompts(vocabulary, plan.input_len, seed=next(level_seed))
            return lambda index: loadgen.request_body(plan.model, make(index), plan.output_len)

        out.info(f"warming up {plan.model} with {plan.warmup} request(s)")
        for index in range(plan.warmup):
            sample = await loadgen.one_request(session, plan.url,
                                               loadgen.request_body(plan.model, prompt(index), plan.output_len))
            if not sample.ok:
                raise AnimllmError(f"warm-up request failed: {sample.error}")
        runs = [(level, None) for level in plan.levels] or [(None, rate) for rate in plan.request_rates]
        with out.progress() as progress:
            for concurrency, rate in runs:
                task = progress.add_task(level_label(concurrency, rate), total=plan.requests)
                with PeakVram(plan.nvml_module) as peak:
                    samples, duration = await loadgen.run_level(
                        session, plan.url, payloads(), plan.requests, concurrency=concurrency, request_rate=rate,
                        on_done=lambda _sample, task=task: progress.advance(task))
                result.levels.append(LevelResult(concurrency=concurrency, request_rate=rate,
                                                 summary=summarize(samples, duration), samples=samples,
                                                 vram_peak_bytes=peak.bytes))
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

"""The load generator: asyncio and aiohttp, one event loop. It must never be the
bottleneck (it sustains thousands of streamed chunks per second on one core: see
benchmarks/bench_generator.py), so each SSE line is handled the way vLLM's own benchmark
does it, with a prefix check and one json.loads, rather than through a general SSE parser.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Callable

import aiohttp

from animllm_cli.bench.metrics import Sample
from animllm_cli.errors import AnimllmError

PROMPT_SEED = ("The studio renders every frame twice: once for the animators and once for the "
               "lighting team, who care about shadows more than anyone else in the building. ")


async def prompt_token_ids(session: aiohttp.ClientSession, url: str, model: str, length: int) -> list[int]:
    """A prompt of exactly `length` tokens of the served model: tokenize a seed text on the
    server, then repeat its ids. Sent as a token-id prompt, so no re-tokenizing changes it."""
    async with session.post(f"{url}/tokenize", json={"model": model, "prompt": PROMPT_SEED,
                                                     "add_special_tokens": False}) as resp:
        if resp.status != 200:
            raise AnimllmError(f"the server cannot tokenize for '{model}' ({resp.status}): {(await resp.text())[:200]}",
                               hint="bench needs vLLM's /tokenize (the gateway relays it)")
        ids = (await resp.json())["tokens"]
    if not ids:
        raise AnimllmError("the server returned no tokens for the seed prompt")
    return [ids[i % len(ids)] for i in range(length)]


async def one_request(session: aiohttp.ClientSession, url: str, payload: bytes) -> Sample:
    sample = Sample(ok=False, start=time.perf_counter())
    last = sample.start
    try:
        async with session.post(f"{url}/v1/completions", data=payload,
                                headers={"content-type": "application/json"}) as resp:
            if resp.status != 200:
                sample.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return sample
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    sample.ok = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    sample.error = str(event["error"].get("message"))[:200]
                    break
                choices = event.get("choices")
                if choices and choices[0].get("text"):
                    now = time.perf_counter()
                    if sample.ttft is None:
                        sample.ttft = now - sample.start
                    else:
                        sample.itl.append(now - last)
                    last = now
                usage = event.get("usage")
                if usage:
                    sample.prompt_tokens = usage.get("prompt_tokens") or 0
                    sample.output_tokens = usage.get("completion_tokens") or 0
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"[:200]
        sample.ok = False
    sample.latency = time.perf_counter() - sample.start
    if sample.ok and not sample.output_tokens:
        sample.ok, sample.error = False, "no usage in the stream (token counts come from the server)"
    return sample


def request_body(model: str, prompt: list[int], output_len: int) -> bytes:
    return json.dumps({"model": model, "prompt": prompt, "max_tokens": output_len, "min_tokens": output_len,
                       "ignore_eos": True, "stream": True, "temperature": 0.0,
                       "stream_options": {"include_usage": True, "continuous_usage_stats": False}}).encode()


async def run_level(session: aiohttp.ClientSession, url: str, payload: bytes, requests: int, *,
                    concurrency: int | None = None, request_rate: float | None = None, seed: int = 0,
                    on_done: Callable[[Sample], None] | None = None) -> tuple[list[Sample], float]:
    """`requests` requests, at most `concurrency` at once, or arriving as a Poisson process
    at `request_rate` per second. Returns the samples and the level's wall time."""
    samples: list[Sample] = []
    limit = asyncio.Semaphore(concurrency or requests)

    async def send() -> None:
        async with limit:
            sample = await one_request(session, url, payload)
        samples.append(sample)
        if on_done:
            on_done(sample)

    started = time.perf_counter()
    if request_rate:
        rng = random.Random(seed)
        tasks = []
        for _ in range(requests):
            tasks.append(asyncio.create_task(send()))
            await asyncio.sleep(rng.expovariate(request_rate))
        await asyncio.gather(*tasks)
    else:
        await asyncio.gather(*(send() for _ in range(requests)))
    return samples, time.perf_counter() - started

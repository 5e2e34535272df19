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


async def vocabulary_sample(session: aiohttp.ClientSession, url: str, model: str) -> list[int]:
    """Token ids of the served model, from the server's own tokenizer (a seed text)."""
    async with session.post(f"{url}/tokenize", json={"model": model, "prompt": PROMPT_SEED,
                                                     "add_special_tokens": False}) as resp:
        if resp.status != 200:
            raise AnimllmError(f"the server cannot tokenize for '{model}' ({resp.status}): {(await resp.text())[:200]}",
                               hint="bench needs vLLM's /tokenize (the gateway relays it)")
        ids = (await resp.json())["tokens"]
    if not ids:
        raise AnimllmError("the server returned no tokens for the seed prompt")
    return ids


def prompts(vocabulary: list[int], length: int, seed: int = 0) -> "Callable[[int], list[int]]":
    """Request i gets its own prompt of exactly `length` tokens, drawn from the model's
    tokens. Sent as token ids, so no re-tokenizing changes the length. Distinct prompts, like
    vLLM's random dataset: identical ones would measure the prefix cache, not prefill."""
    def prompt(index: int) -> list[int]:
        return random.Random(seed * 1_000_003 + index).choices(vocabulary, k=length)
    return prompt


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
                # As vLLM's benchmark: any chunk with choices is a token, even one whose text
                # is empty (a special token, or half of a multi-byte character).
                if event.get("choices"):
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
    # E2EL ends at the last token, as in vLLM's benchmark (not at [DONE] or the usage chunk).
    sample.latency = (last if sample.ttft is not None else time.perf_counter()) - sample.start
    if sample.ok and not sample.output_tokens:
        sample.ok, sample.error = False, "no usage in the stream (token counts come from the server)"
    return sample


def request_body(model: str, prompt: list[int], output_len: int) -> bytes:
    # The same body vLLM's benchmark sends for its "vllm" backend, with the prompt as token ids.
    return json.dumps({"model": model, "prompt": prompt, "repetition_penalty": 1.0, "max_tokens": output_len,
                       "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}).encode()


async def run_level(session: aiohttp.ClientSession, url: str, payload: Callable[[int], bytes], requests: int, *,
                    concurrency: int | None = None, request_rate: float | None = None, seed: int = 0,
                    on_done: Callable[[Sample], None] | None = None) -> tuple[list[Sample], float]:
    """`requests` requests, at most `concurrency` at once, or arriving as a Poisson process
    at `request_rate` per second. Returns the samples and the level's wall time."""
    samples: list[Sample] = []
    limit = asyncio.Semaphore(concurrency or requests)
    bodies = [payload(i) for i in range(requests)]  # built before the clock starts

    async def send(index: int) -> None:
        async with limit:
            sample = await one_request(session, url, bodies[index])
        samples.append(sample)
        if on_done:
            on_done(sample)

    started = time.perf_counter()
    if request_rate:
        rng = random.Random(seed)
        tasks = []
        for index in range(requests):
            tasks.append(asyncio.create_task(send(index)))
            await asyncio.sleep(rng.expovariate(request_rate))
        await asyncio.gather(*tasks)
    else:
        await asyncio.gather(*(send(index) for index in range(requests)))
    return samples, time.perf_counter() - started

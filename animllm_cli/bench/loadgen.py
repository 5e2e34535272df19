"""The load generator: asyncio and aiohttp, one event loop. It must never be the
bottleneck (it sustains thousands of streamed chunks per second on one core: see
benchmarks/bench_generator.py), so each SSE line is handled the way vLLM's own benchmark
does it, with a prefix check and one json.loads, rather than through a general SSE parser.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from animllm_cli.bench.metrics import Sample

# The text whose tokens random prompts are drawn from (and whose words bench-mix's prompts are).
PROMPT_SEED = ("The studio renders every frame twice: once for the animators and once for the "
               "lighting team, who care about shadows more than anyone else in the building. ")


COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
ENDPOINTS = {"completions": COMPLETIONS, "chat": CHAT}


@dataclass(frozen=True)
class Request:
    """One request of a level, its body built before the clock starts."""
    path: str                  # COMPLETIONS or CHAT
    body: bytes
    model: str


def completion_body(model: str, prompt: list[int] | str, output_len: int, *, ignore_eos: bool = True) -> bytes:
    # The body vLLM's benchmark sends for its "vllm" backend (a prompt of token ids or text).
    return json.dumps({"model": model, "prompt": prompt, "repetition_penalty": 1.0, "max_tokens": output_len,
                       "stream": True, "stream_options": {"include_usage": True},
                       **({"ignore_eos": True} if ignore_eos else {})}).encode()


def chat_body(model: str, messages: list[dict[str, Any]], output_len: int, *, ignore_eos: bool = True) -> bytes:
    # The body vLLM's benchmark sends for its "openai-chat" backend.
    return json.dumps({"model": model, "messages": messages, "max_completion_tokens": output_len,
                       "stream": True, "stream_options": {"include_usage": True},
                       **({"ignore_eos": True} if ignore_eos else {})}).encode()


async def one_request(session: aiohttp.ClientSession, url: str, request: Request) -> Sample:
    sample = Sample(ok=False, start=time.perf_counter(), model=request.model)
    last = sample.start
    try:
        async with session.post(f"{url}{request.path}", data=request.body,
                                headers={"content-type": "application/json"}) as resp:
            if resp.status != 200:
                sample.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return sample
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # blank lines, and comments such as the gateway's ": loading coder…"
                data = line[5:].strip()
                if data == b"[DONE]":
                    sample.ok = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    sample.error = str(event["error"].get("message"))[:200]
                    break
                # As vLLM's benchmark: any chunk with choices is a token, even one whose text
                # is empty (a special token, half of a multi-byte character, chat's role chunk).
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


async def run_level(session: aiohttp.ClientSession, url: str, requests: list[Request], *,
                    concurrency: int | None = None, offsets: list[float] | None = None,
                    on_done: Callable[[Sample], None] | None = None) -> tuple[list[Sample], float]:
    """The requests, at most `concurrency` at once, each sent `offsets[i]` seconds after
    the start (arrivals.send_offsets: Poisson, gamma or a ramp; None: all at once).
    Returns the samples, in the requests' order, and the level's wall time."""
    limit = asyncio.Semaphore(concurrency or len(requests))

    async def send(request: Request) -> Sample:
        async with limit:
            sample = await one_request(session, url, request)
        if on_done:
            on_done(sample)
        return sample

    started = time.perf_counter()
    tasks = []
    for index, request in enumerate(requests):
        if offsets and offsets[index] > 0:
            await asyncio.sleep(max(0.0, started + offsets[index] - time.perf_counter()))
        tasks.append(asyncio.create_task(send(request)))
    samples = await asyncio.gather(*tasks)
    return list(samples), time.perf_counter() - started

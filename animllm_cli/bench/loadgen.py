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
from animllm_cli.client.chat_apis import MESSAGES as MESSAGES_API

# The text whose tokens random prompts are drawn from (and whose words bench-mix's prompts are).
PROMPT_SEED = ("The studio renders every frame twice: once for the animators and once for the "
               "lighting team, who care about shadows more than anyone else in the building. ")


COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"      # Anthropic's Messages API (vLLM 0.11.1 on)
RESPONSES = "/v1/responses"    # OpenAI's Responses API (vLLM 0.10.0 on)
ENDPOINTS = {"completions": COMPLETIONS, "chat": CHAT, "messages": MESSAGES, "responses": RESPONSES}
TAKES_MESSAGES = (CHAT, MESSAGES, RESPONSES)  # the endpoints whose prompt is a conversation


@dataclass(frozen=True)
class Request:
    """One request of a level, its body built before the clock starts."""
    path: str                  # one of ENDPOINTS' paths
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


def messages_body(model: str, messages: list[dict[str, Any]], output_len: int) -> bytes:
    # Anthropic's request (a system message goes beside the others, as that API takes it);
    # vLLM's has no ignore_eos here, so answers may end early.
    return json.dumps(MESSAGES_API.body({"model": model, "messages": messages, "max_tokens": output_len},
                                        True)).encode()


def responses_body(model: str, messages: list[dict[str, Any]], output_len: int, *, ignore_eos: bool = True) -> bytes:
    return json.dumps({"model": model, "input": messages, "max_output_tokens": output_len, "stream": True,
                       "store": False, **({"ignore_eos": True} if ignore_eos else {})}).encode()


TOKEN, DONE, FAILED = "token", "done", "failed"


def _openai_event(event: dict, sample: Sample) -> str | None:
    """A chunk of chat or completions. As vLLM's benchmark: any chunk with choices is a
    token, even one whose text is empty (a special token, half of a multi-byte character,
    chat's role chunk)."""
    if "error" in event:
        sample.error = str(event["error"].get("message"))[:200]
        return FAILED
    usage = event.get("usage")
    if usage:
        sample.prompt_tokens = usage.get("prompt_tokens") or 0
        sample.output_tokens = usage.get("completion_tokens") or 0
    return TOKEN if event.get("choices") else None


def _messages_event(event: dict, sample: Sample) -> str | None:
    """An event of Anthropic's stream: a content block's delta is a token; the usage comes
    in message_start (input) and message_delta (output); message_stop ends it."""
    kind = event.get("type")
    if kind == "content_block_delta":
        return TOKEN
    if kind == "message_start":
        sample.prompt_tokens = ((event.get("message") or {}).get("usage") or {}).get("input_tokens") or 0
    elif kind == "message_delta":
        sample.output_tokens = (event.get("usage") or {}).get("output_tokens") or 0
    elif kind == "message_stop":
        return DONE
    elif kind == "error" or "error" in event:
        sample.error = str((event.get("error") or {}).get("message"))[:200]
        return FAILED
    return None


def _responses_event(event: dict, sample: Sample) -> str | None:
    """An event of the Responses API's stream: a text (or reasoning) delta is a token;
    response.completed (OpenAI's API: response.incomplete, at max_output_tokens) carries
    the usage and ends it."""
    kind = event.get("type") or ""
    if kind.endswith(".delta") and ("output_text" in kind or "reasoning" in kind):
        return TOKEN
    if kind in ("response.completed", "response.incomplete"):  # incomplete: it hit max_output_tokens
        usage = (event.get("response") or {}).get("usage") or {}
        sample.prompt_tokens, sample.output_tokens = usage.get("input_tokens") or 0, usage.get("output_tokens") or 0
        return DONE
    if kind in ("error", "response.failed") or "error" in event:
        failure = event.get("error") or (event.get("response") or {}).get("error") or event
        sample.error = str(failure.get("message") if isinstance(failure, dict) else failure)[:200]
        return FAILED
    return None


EVENT_READERS = {COMPLETIONS: _openai_event, CHAT: _openai_event, MESSAGES: _messages_event,
                 RESPONSES: _responses_event}


async def one_request(session: aiohttp.ClientSession, url: str, request: Request) -> Sample:
    sample = Sample(ok=False, start=time.perf_counter(), model=request.model)
    last = sample.start
    try:
        async with session.post(f"{url}{request.path}", data=request.body,
                                headers={"content-type": "application/json"}) as resp:
            if resp.status != 200:
                sample.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return sample
            read = EVENT_READERS[request.path]
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # blank lines, `event:` names, comments such as the gateway's ": loading coder…"
                data = line[5:].strip()
                if data == b"[DONE]":
                    sample.ok = True
                    continue
                outcome = read(json.loads(data), sample)
                if outcome == TOKEN:
                    now = time.perf_counter()
                    if sample.ttft is None:
                        sample.ttft = now - sample.start
                    else:
                        sample.itl.append(now - last)
                    last = now
                elif outcome == DONE:
                    sample.ok = True
                elif outcome == FAILED:
                    break
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

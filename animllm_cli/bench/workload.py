"""What bench sends: prompts of an exact token length drawn from the model's own tokens
(vLLM's random dataset), the user's own prompts (`--prompts FILE`), or, for `bench-mix`,
text prompts that need no model's tokenizer (asking one would load that model)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from animllm_cli.bench import loadgen
from animllm_cli.bench.loadgen import CHAT, COMPLETIONS, MESSAGES, RESPONSES, Request
from animllm_cli.bench.prompts_file import PromptEntry, has_messages, read_prompts
from animllm_cli.errors import AnimllmError, UsageError

WORDS = loadgen.PROMPT_SEED.split()


@dataclass
class Workload:
    input_len: int                         # random prompts: tokens (words for text prompts)
    output_len: int
    endpoint: str = COMPLETIONS            # or another of loadgen.ENDPOINTS' paths
    output_len_given: bool = False         # --output-len on the command line beats the file's lengths
    ignore_eos: bool = True
    entries: list[PromptEntry] | None = None  # --prompts FILE
    no_tokenizer: bool = False             # bench-mix: asking a model's tokenizer would load it: words, --output-len
    _vocabulary: dict[str, list[int]] = field(default_factory=dict)
    _reference_lengths: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def source(self) -> str:
        if self.entries is not None:
            return "file"
        return "text" if self.no_tokenizer else "tokens"

    async def requests(self, session: aiohttp.ClientSession, url: str, models: list[str], start: int,
                       seed: int) -> list[Request]:
        """Request i goes to models[i]; prompts from `start` on (the file's entries cycle),
        each distinct, so that the prefix cache does not stand in for prefill."""
        built = []
        for index, model in enumerate(models):
            if self.source == "file":
                entry = self.entries[(start + index) % len(self.entries)]
                built.append(await self._from_entry(session, url, model, entry))
            else:
                built.append(await self._random(session, url, model, seed * 1_000_003 + start + index))
        return built

    async def _random(self, session: aiohttp.ClientSession, url: str, model: str, seed: int) -> Request:
        rng = random.Random(seed)
        if self.source == "text":
            text = " ".join(rng.choices(WORDS, k=self.input_len))
            return self._request(model, text, None, self.output_len)
        if model not in self._vocabulary:  # the model's own tokens, from a seed text
            self._vocabulary[model] = await tokenize(session, url, model, loadgen.PROMPT_SEED)
        ids = rng.choices(self._vocabulary[model], k=self.input_len)
        if self.endpoint == COMPLETIONS:  # token ids: no re-tokenizing changes the length
            return self._request(model, ids, None, self.output_len)
        # A conversation takes text: the ids as text, as vLLM's random dataset sends them.
        return self._request(model, await detokenize(session, url, model, ids), None, self.output_len)

    async def _from_entry(self, session: aiohttp.ClientSession, url: str, model: str, entry: PromptEntry) -> Request:
        return self._request(model, entry.prompt, entry.messages, await self._output_len(session, url, model, entry))

    async def _output_len(self, session: aiohttp.ClientSession, url: str, model: str, entry: PromptEntry) -> int:
        if self.output_len_given:
            return self.output_len
        if entry.output_tokens is not None:
            return entry.output_tokens
        if entry.reference is None or self.no_tokenizer:
            return self.output_len
        key = (model, id(entry))
        if key not in self._reference_lengths:  # ShareGPT: as long as the answer in the file
            self._reference_lengths[key] = max(1, len(await tokenize(session, url, model, entry.reference)))
        return self._reference_lengths[key]

    def _request(self, model: str, prompt: Any, messages: list[dict] | None, output_len: int) -> Request:
        if self.endpoint in loadgen.TAKES_MESSAGES:
            messages = messages or [{"role": "user", "content": prompt}]
            if self.endpoint == MESSAGES:
                return Request(MESSAGES, loadgen.messages_body(model, messages, output_len), model)
            if self.endpoint == RESPONSES:
                return Request(RESPONSES, loadgen.responses_body(model, messages, output_len,
                                                                 ignore_eos=self.ignore_eos), model)
            return Request(CHAT, loadgen.chat_body(model, messages, output_len, ignore_eos=self.ignore_eos), model)
        if messages is not None:
            raise AnimllmError("a prompt given as chat messages cannot go to /v1/completions",
                               hint="use --endpoint chat (the default for a file of messages)")
        return Request(COMPLETIONS, loadgen.completion_body(model, prompt, output_len, ignore_eos=self.ignore_eos),
                       model)


def workload_for(prompts: Path | None, endpoint: str | None, *, input_len: int, output_len: int,
                 output_len_given: bool, ignore_eos: bool, no_tokenizer: bool) -> Workload:
    """The options' workload: the file's prompts if given, sent to the endpoint named or
    to the one the file's shape calls for (chat for chat messages)."""
    entries = read_prompts(prompts) if prompts is not None else None
    if endpoint is not None and endpoint not in loadgen.ENDPOINTS:
        raise UsageError(f"--endpoint {endpoint!r}: expected one of {', '.join(loadgen.ENDPOINTS)}")
    chat_file = bool(entries) and has_messages(entries)
    if endpoint == "completions" and chat_file:
        raise UsageError(f"--endpoint completions: {prompts} holds chat messages, which only the chat endpoint takes",
                         hint="leave out --endpoint (chat is chosen for such a file)")
    path = loadgen.ENDPOINTS[endpoint or ("chat" if chat_file else "completions")]
    return Workload(endpoint=path, input_len=input_len, output_len=output_len, output_len_given=output_len_given,
                    ignore_eos=ignore_eos, entries=entries, no_tokenizer=no_tokenizer)


async def tokenize(session: aiohttp.ClientSession, url: str, model: str, text: str) -> list[int]:
    answer = await _utility(session, url, "/tokenize", {"model": model, "prompt": text, "add_special_tokens": False})
    if not answer.get("tokens"):
        raise AnimllmError(f"the server returned no tokens for '{model}' of {text[:40]!r}")
    return answer["tokens"]


async def detokenize(session: aiohttp.ClientSession, url: str, model: str, ids: list[int]) -> str:
    return (await _utility(session, url, "/detokenize", {"model": model, "tokens": ids}))["prompt"]


async def _utility(session: aiohttp.ClientSession, url: str, path: str, body: dict) -> dict:
    async with session.post(f"{url}{path}", json=body) as resp:
        if resp.status != 200:
            raise AnimllmError(f"the server's {path} failed for '{body['model']}' ({resp.status}): "
                               f"{(await resp.text())[:200]}", hint=f"bench needs vLLM's {path} (the gateway relays it)")
        return await resp.json()


"""Ollama's request bodies as the engine's OpenAI ones.

`/api/chat` and `/api/generate` become a streamed `/v1/chat/completions` (a raw generate a
`/v1/completions`): always streamed from the engine, whatever the client asked, so that the
gateway sees when the first token and the last came (Ollama's timing fields) and folds the
stream into one answer itself where the client asked for one. `/api/embed` and
`/api/embeddings` become `/v1/embeddings`.

What Ollama's `options` mean in vLLM's sampling parameters is one table (SAMPLING); the
options with no per-request meaning in vLLM (the engine's own settings, such as num_ctx,
which is its max_model_len, and samplers vLLM lacks) are ignored, as Ollama ignores the
options a runner lacks (NO_VLLM_MEANING, for the README). A field whose meaning animllm
cannot keep (a Go template of Ollama's own, a `context` of token ids, a fill-in-the-middle
`suffix`) is a 400 that names it, never an answer that silently differs.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

# Ollama option -> vLLM's sampling parameter (the OpenAI API's name, or vLLM's extra one)
SAMPLING = {"num_predict": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
            "min_p": "min_p", "seed": "seed", "stop": "stop", "repeat_penalty": "repetition_penalty",
            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
INTEGER_OPTIONS = frozenset({"num_predict", "top_k", "seed"})
NO_VLLM_MEANING = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap", "num_keep",
                   "typical_p", "repeat_last_n", "draft_num_predict", "mirostat", "mirostat_tau", "mirostat_eta",
                   "tfs_z", "penalize_newline", "numa", "low_vram", "f16_kv", "logits_all", "vocab_only",
                   "use_mlock", "embedding_only")
THINK_LEVELS = ("low", "medium", "high", "max")
# The first bytes of the image formats vision models take: a data URL names its type.
IMAGE_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
               (b"RIFF", "image/webp"), (b"BM", "image/bmp"))
GO_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
GO_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
FOREVER = -1.0


class BadRequest(ValueError):
    """A request Ollama's API cannot mean here: its message is the client's 400."""


@dataclass(frozen=True)
class Capabilities:
    """What the model's engine can do beyond plain generation (models.py reads them)."""
    thinking: bool = False
    tools: bool = False
    vision: bool = False


@dataclass
class EngineCall:
    """The engine's request: its route and body, and how the answer is to be read back."""
    path: str
    body: dict[str, Any]
    kind: str             # chat | generate | embed | embeddings
    stream: bool          # what the client asked for (the engine always streams chat and generate)


def keep_alive_s(value: Any) -> float | None:
    """Ollama's keep_alive in seconds: a number of seconds or a Go duration ("5m", "1h30m");
    negative is forever (-1). None: not given (the config's keep_alive holds)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequest(f"keep_alive must be a duration such as \"5m\" or a number of seconds, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        parts = GO_DURATION.findall(body)
        if body == "0":
            return 0.0
        if not parts or "".join(n + u for n, u in parts) != body:
            raise BadRequest(f"keep_alive {value!r} is not a duration: write it as Go does (\"5m\", \"1h30m\", "
                             f"\"30s\", \"-1m\" for forever) or as a number of seconds")
        seconds = sign * sum(float(n) * GO_UNITS_S[u] for n, u in parts)
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise BadRequest(f"keep_alive must be finite, got {value!r}")
    return FOREVER if seconds < 0 else seconds


def sampling(options: Any) -> dict[str, Any]:
    """vLLM's sampling parameters from Ollama's `options` (unknown and meaningless ones left out)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    params: dict[str, Any] = {}
    for name, value in options.items():
        if name not in SAMPLING or value is None:
            continue
        if name == "stop":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise BadRequest('option "stop" must be an array of strings')
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequest(f'option "{name}" must be a number, got {json.dumps(value)[:40]}')
        elif name in INTEGER_OPTIONS:
            value = int(value)
        if name == "num_predict" and value <= 0:  # -1: no limit, -2: fill the context; vLLM's default is both
            continue
        params[SAMPLING[name]] = value
    return params


def image_part(image: Any, where: str) -> dict[str, Any]:
    """One base64 image as an OpenAI image part, a data URL of its own type."""
    if not isinstance(image, str):
        raise BadRequest(f"{where} must be a base64 string")
    try:
        head = base64.b64decode(image[:64].encode() + b"=" * (-len(image[:64]) % 4))
        base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is not valid base64") from None
    media = next((kind for magic, kind in IMAGE_TYPES if head.startswith(magic)), "image/jpeg")
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{image}"}}


def with_images(text: str, images: Any, where: str, capabilities: Capabilities, model: str) -> Any:
    """A message's content: the text alone, or the text and its images as content parts."""
    if not images:
        return text
    if not isinstance(images, list):
        raise BadRequest(f"{where} must be a list of base64 strings")
    if not capabilities.vision:
        raise BadRequest(f'"{model}" does not support images (its config.json names no vision encoder)')
    return [{"type": "text", "text": text}, *(image_part(image, f"{where}[{i}]") for i, image in enumerate(images))]


def chat_messages(messages: Any, capabilities: Capabilities, model: str) -> list[dict[str, Any]]:
    """Ollama's messages as OpenAI's: images as parts, tool calls with their arguments as a
    JSON string and an id, and each tool result tied to the call it answers."""
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    converted: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []  # (call id, function name), in the order they were made
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a role")
        role, content = message["role"].lower(), message.get("content") or ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string")
        out: dict[str, Any] = {"role": role,
                               "content": with_images(content, message.get("images"), f"messages[{i}].images",
                                                      capabilities, model)}
        if role == "assistant" and message.get("tool_calls"):
            out["tool_calls"] = _tool_calls(message["tool_calls"], i)
            unanswered += [(call["id"], call["function"]["name"]) for call in out["tool_calls"]]
        if role == "tool":
            out["tool_call_id"] = message.get("tool_call_id") or _answered(unanswered, message.get("tool_name"))
        converted.append(out)
    return converted


def _tool_calls(calls: Any, i: int) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise BadRequest(f"messages[{i}].tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(f"messages[{i}].tool_calls[{j}] needs a function with a name")
        arguments = function.get("arguments") or {}
        out.append({"id": call.get("id") or f"call_{i}_{j}", "type": "function",
                    "function": {"name": function["name"],
                                 "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    return out


def _answered(unanswered: list[tuple[str, str]], name: Any) -> str:
    """The id of the call a tool result answers: the first unanswered one of its name (of any
    name where it names none)."""
    for k, (call_id, called) in enumerate(unanswered):
        if name is None or called == name:
            del unanswered[k]
            return call_id
    return f"call_{name or 'unknown'}"


def structured(fmt: Any) -> dict[str, Any]:
    """Ollama's `format` as vLLM's structured output."""
    if fmt in (None, ""):
        return {}
    if fmt == "json":
        return {"response_format": {"type": "json_object"}}
    if isinstance(fmt, dict):
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}}
    raise BadRequest(f'invalid format: {json.dumps(fmt)[:60]} (give "json" or a JSON schema)')


def thinking(think: Any, capabilities: Capabilities, model: str) -> dict[str, Any]:
    """`think` as the chat template's switch (Qwen3's `enable_thinking`) and, for a level,
    vLLM's reasoning_effort; a model whose engine runs no reasoning parser cannot think apart."""
    if think is None:
        return {}
    if not isinstance(think, bool) and think not in THINK_LEVELS:
        raise BadRequest(f'invalid think value: {json.dumps(think)[:40]} (must be "high", "medium", "low", '
                         f'"max", true, or false)')
    if think is False:
        return {"chat_template_kwargs": {"enable_thinking": False}}
    if not capabilities.thinking:
        raise BadRequest(f'"{model}" does not support thinking (its engine runs no reasoning parser: '
                         f'extra_args reasoning_parser)')
    effort = {"reasoning_effort": "high" if think == "max" else think} if isinstance(think, str) else {}
    return {"chat_template_kwargs": {"enable_thinking": True}, **effort}


def _common(payload: dict[str, Any], capabilities: Capabilities, model: str) -> dict[str, Any]:
    """What chat and generate share: sampling, structured output, thinking, log-probabilities."""
    body = {**sampling(payload.get("options")), **structured(payload.get("format")),
            **thinking(payload.get("think"), capabilities, model), "stream": True,
            "stream_options": {"include_usage": True}}
    if payload.get("logprobs"):
        top = payload.get("top_logprobs") or 0
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20:
            raise BadRequest("top_logprobs must be between 0 and 20")
        body.update(logprobs=True, top_logprobs=top)
    return body


def chat_call(payload: dict[str, Any], capabilities: Capabilities, model: str) -> EngineCall:
    body = {"model": payload["model"], "messages": chat_messages(payload.get("messages") or [], capabilities, model),
            **_common(payload, capabilities, model)}
    tools = payload.get("tools")
    if tools:
        if not capabilities.tools:
            raise BadRequest(f'"{model}" does not support tools (its engine runs no tool parser: extra_args '
                             f'enable_auto_tool_choice and tool_call_parser)')
        body["tools"] = tools
    return EngineCall("/v1/chat/completions", body, "chat", payload.get("stream") is not False)


def generate_call(payload: dict[str, Any], capabilities: Capabilities, model: str) -> EngineCall:
    for unkept, why in (("template", "the model's own chat template is used (see /api/show)"),
                        ("context", "send the conversation to /api/chat instead"),
                        ("suffix", "fill-in-the-middle is not offered: build the prompt and send it with raw")):
        if payload.get(unkept):
            raise BadRequest(f"`{unkept}` is not supported by animllm's /api/generate: {why}")
    prompt = payload.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    stream = payload.get("stream") is not False
    if payload.get("raw"):
        if payload.get("system"):
            raise BadRequest("raw mode does not support template, system, or context")
        if payload.get("images"):
            raise BadRequest("raw mode does not take images: send them without raw, or to /api/chat")
        return EngineCall("/v1/completions", {"model": payload["model"], "prompt": prompt,
                                              **_common(payload, capabilities, model)}, "generate", stream)
    system = payload.get("system")
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    messages.append({"role": "user", "content": with_images(prompt, payload.get("images"), "images", capabilities,
                                                           model)})
    return EngineCall("/v1/chat/completions", {"model": payload["model"], "messages": messages,
                                               **_common(payload, capabilities, model)}, "generate", stream)


def embed_call(payload: dict[str, Any], kind: str) -> EngineCall:
    """/api/embed (`input`: a string or a list of them; `dimensions`) or /api/embeddings (`prompt`)."""
    given = payload.get("input") if kind == "embed" else payload.get("prompt")
    if isinstance(given, str):
        given = [given] if kind == "embed" else given
    elif kind == "embeddings" or not isinstance(given, list) or not all(isinstance(s, str) for s in given):
        raise BadRequest("invalid input type" if kind == "embed" else "prompt must be a string")
    body: dict[str, Any] = {"model": payload["model"], "input": given}
    dimensions = payload.get("dimensions")
    if dimensions:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            raise BadRequest("dimensions must be a positive integer")
        body["dimensions"] = dimensions
    return EngineCall("/v1/embeddings", body, kind, False)


def is_empty(payload: dict[str, Any], kind: str) -> bool:
    """A request that only loads (or, with keep_alive 0, unloads) its model: nothing to answer."""
    if kind == "chat":
        return not payload.get("messages")
    if kind == "generate":
        return not payload.get("prompt") and not payload.get("images")
    return not (payload.get("input") if kind == "embed" else payload.get("prompt"))

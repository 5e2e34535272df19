"""The conversational APIs `chat` can speak, each as a request body built from the
conversation (OpenAI's chat messages) and the readers of its answer and of its stream:
OpenAI's chat completions, Anthropic's Messages API and OpenAI's Responses API. The
gateway routes all three by model alike; a person tries the one their tool speaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from animllm_cli.errors import AnimllmError

DEFAULT_MAX_TOKENS = 4096  # Anthropic's API requires max_tokens; chat leaves it to the server elsewhere


@dataclass
class Delta:
    """What one event of a stream says: text, the model, tokens so far, why it ended."""
    text: str | None = None
    model: str | None = None
    tokens: int | None = None
    finish: str | None = None
    done: bool = False


@dataclass(frozen=True)
class ChatApi:
    name: str
    path: str
    body: Callable[[dict[str, Any], bool], dict[str, Any]]   # (chat payload, stream) -> the API's body
    answer: Callable[[dict[str, Any]], tuple[str, int | None, str | None]]  # -> text, tokens, why it ended
    event: Callable[[dict[str, Any]], Delta]


def _split(payload: dict[str, Any]) -> tuple[list[dict], dict[str, Any]]:
    messages = payload.get("messages") or []
    return messages, {k: v for k, v in payload.items() if k != "messages" and v is not None}


# ---------------------------------------------------------------- OpenAI chat completions
def _chat_body(payload: dict[str, Any], stream: bool) -> dict[str, Any]:
    return {**payload, "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}


def _chat_answer(data: dict[str, Any]) -> tuple[str, int | None, str | None]:
    choice = (data.get("choices") or [{}])[0]
    return (choice.get("message") or {}).get("content") or "", (data.get("usage") or {}).get("completion_tokens"), \
        choice.get("finish_reason")


def _chat_event(data: dict[str, Any]) -> Delta:
    delta = Delta(model=data.get("model"), tokens=(data.get("usage") or {}).get("completion_tokens"))
    for choice in data.get("choices") or []:
        delta.text = (delta.text or "") + ((choice.get("delta") or {}).get("content") or "") or None
        delta.finish = choice.get("finish_reason") or delta.finish
    return delta


# ---------------------------------------------------------------- Anthropic's Messages API
def _messages_body(payload: dict[str, Any], stream: bool) -> dict[str, Any]:
    messages, options = _split(payload)
    system = "\n\n".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
    body = {**options, "messages": [{"role": m["role"], "content": _anthropic_content(m.get("content"))}
                                    for m in messages if m.get("role") != "system"],
            "max_tokens": options.get("max_tokens") or DEFAULT_MAX_TOKENS, "stream": stream}
    body.pop("seed", None)  # not in Anthropic's API
    return {**body, "system": system} if system else body


def _anthropic_content(content: Any) -> Any:
    """OpenAI's content parts as Anthropic's: text as it is, a data-URL image as a base64 source."""
    if not isinstance(content, list):
        return content
    parts = []
    for part in content:
        if part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            media, _, data = url.removeprefix("data:").partition(";base64,")
            if not data:
                raise AnimllmError("only attached image files can go to the messages endpoint")
            parts.append({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
        else:
            parts.append(part)
    return parts


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")


def _messages_answer(data: dict[str, Any]) -> tuple[str, int | None, str | None]:
    text = "".join(block.get("text", "") for block in data.get("content") or [] if block.get("type") == "text")
    return text, (data.get("usage") or {}).get("output_tokens"), data.get("stop_reason")


def _messages_event(data: dict[str, Any]) -> Delta:
    kind = data.get("type")
    if kind == "error":
        raise AnimllmError(f"the answer broke off: {(data.get('error') or {}).get('message')}")
    if kind == "content_block_delta":
        return Delta(text=(data.get("delta") or {}).get("text"))
    if kind == "message_start":
        return Delta(model=(data.get("message") or {}).get("model"))
    if kind == "message_delta":
        return Delta(tokens=(data.get("usage") or {}).get("output_tokens"),
                     finish=(data.get("delta") or {}).get("stop_reason"))
    return Delta(done=kind == "message_stop")


# ---------------------------------------------------------------- OpenAI's Responses API
def _responses_body(payload: dict[str, Any], stream: bool) -> dict[str, Any]:
    messages, options = _split(payload)
    max_tokens = options.pop("max_tokens", None)
    options.pop("seed", None)  # not in the Responses API
    return {**options, "input": [{"role": m["role"], "content": _responses_content(m.get("content"))}
                                 for m in messages],
            "stream": stream, "store": False, **({"max_output_tokens": max_tokens} if max_tokens else {})}


def _responses_content(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    return [{"type": "input_image", "image_url": (p.get("image_url") or {}).get("url")} if p.get("type") == "image_url"
            else {"type": "input_text", "text": p.get("text", "")} for p in content]


def _responses_answer(data: dict[str, Any]) -> tuple[str, int | None, str | None]:
    text = "".join(part.get("text", "") for item in data.get("output") or [] if item.get("type") == "message"
                   for part in item.get("content") or [] if part.get("type") == "output_text")
    return text, (data.get("usage") or {}).get("output_tokens"), data.get("status")


def _responses_event(data: dict[str, Any]) -> Delta:
    kind = data.get("type") or ""
    if kind in ("error", "response.failed"):
        failure = data.get("error") or (data.get("response") or {}).get("error") or data
        raise AnimllmError(f"the answer broke off: {failure.get('message') if isinstance(failure, dict) else failure}")
    if kind == "response.output_text.delta":
        return Delta(text=data.get("delta"))
    if kind == "response.created":
        return Delta(model=(data.get("response") or {}).get("model"))
    if kind in ("response.completed", "response.incomplete"):  # incomplete: it hit max_output_tokens
        response = data.get("response") or {}
        return Delta(tokens=(response.get("usage") or {}).get("output_tokens"), finish=response.get("status"),
                     done=True)
    return Delta()


CHAT = ChatApi("chat", "/v1/chat/completions", _chat_body, _chat_answer, _chat_event)
MESSAGES = ChatApi("messages", "/v1/messages", _messages_body, _messages_answer, _messages_event)
RESPONSES = ChatApi("responses", "/v1/responses", _responses_body, _responses_answer, _responses_event)
CHAT_APIS = {api.name: api for api in (CHAT, MESSAGES, RESPONSES)}

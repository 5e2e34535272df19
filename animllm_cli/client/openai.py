"""A small client for OpenAI-compatible servers (the gateway, vLLM, others): chat
completions (or Anthropic's Messages API, or the Responses API: client/chat_apis.py),
streamed or not, with the timings a person wants to see."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import httpx

from animllm_cli.client.chat_apis import CHAT, ChatApi
from animllm_cli.credentials import bearer
from animllm_cli.errors import AnimllmError


class ServerNotRunning(AnimllmError):
    def __init__(self, url: str) -> None:
        super().__init__(f"nothing answers at {url}",
                         hint="start the gateway with `animllm serve` (or `animllm serve --detach`), or pass --url")


@dataclass
class ChatResult:
    text: str = ""
    model: str | None = None
    ttft_s: float | None = None
    elapsed_s: float = 0.0
    completion_tokens: int | None = None
    finish_reason: str | None = None
    cancelled: bool = False
    response: dict[str, Any] | None = None   # the whole response object (non-streamed)

    @property
    def tokens_per_s(self) -> float | None:
        if not self.completion_tokens or self.ttft_s is None or self.elapsed_s <= self.ttft_s:
            return None
        return (self.completion_tokens - 1) / (self.elapsed_s - self.ttft_s) if self.completion_tokens > 1 else None


def server_message(response: httpx.Response) -> str:
    """The message of an OpenAI error envelope, `{"error": "text"}` as vLLM's key check
    answers, or the body as it is."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return str(data.get("message") or response.text) if isinstance(data, dict) else response.text


@dataclass
class OpenAIClient:
    base_url: str
    api_key: str | None = None
    timeout_s: float = 300.0
    api: ChatApi = CHAT   # which API `chat` speaks (client/chat_apis.py)
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._http = httpx.Client(base_url=self.base_url.rstrip("/"), headers=bearer(self.api_key),
                                  timeout=httpx.Timeout(self.timeout_s, connect=5))

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        try:
            response = self._http.post(path, json=payload)
        except httpx.ConnectError:
            raise ServerNotRunning(self.base_url) from None
        except httpx.HTTPError as exc:
            raise AnimllmError(f"request to {self.base_url} failed: {exc}") from None
        if response.status_code >= 400:
            raise AnimllmError(f"the server answered {response.status_code}: {server_message(response)}")
        return response

    def chat(self, payload: dict[str, Any]) -> ChatResult:
        started = time.perf_counter()
        data = self._post(self.api.path, self.api.body(payload, False)).json()
        text, tokens, finish = self.api.answer(data)
        return ChatResult(text=text, model=data.get("model"), elapsed_s=time.perf_counter() - started,
                          completion_tokens=tokens, finish_reason=finish, response=data)

    def chat_stream(self, payload: dict[str, Any], result: ChatResult,
                    on_wait: Callable[[str], None] | None = None) -> Iterator[str]:
        """Yield text deltas as they arrive; fill `result` with timings and counts.
        `on_wait` gets the gateway's comment lines ("loading coder… 12 s") while the
        request waits for a model to be loaded."""
        from httpx_sse import SSEError, connect_sse

        started = time.perf_counter()
        chunks = 0
        try:
            with connect_sse(self._http, "POST", self.api.path, json=self.api.body(payload, True)) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                    raise AnimllmError(f"the server answered {source.response.status_code}: "
                                       f"{server_message(source.response)}")
                for event in _events_and_comments(source.response, on_wait):
                    if event.data.strip() == "[DONE]":
                        break
                    data = json.loads(event.data)
                    if "error" in data and "type" not in data:  # the gateway's, or an engine's, in OpenAI's shape
                        raise AnimllmError(f"the answer broke off: {data['error'].get('message')}")
                    delta = self.api.event(data)
                    result.model = delta.model or result.model
                    result.completion_tokens = delta.tokens if delta.tokens is not None else result.completion_tokens
                    result.finish_reason = delta.finish or result.finish_reason
                    if delta.text:
                        if result.ttft_s is None:
                            result.ttft_s = time.perf_counter() - started
                        chunks += 1
                        result.text += delta.text
                        yield delta.text
                    if delta.done:
                        break
        except httpx.ConnectError:
            raise ServerNotRunning(self.base_url) from None
        except (httpx.HTTPError, SSEError) as exc:
            raise AnimllmError(f"the stream from {self.base_url} failed: {exc}") from None
        finally:
            result.elapsed_s = time.perf_counter() - started
            if result.completion_tokens is None and chunks:
                result.completion_tokens = chunks


def sse_lines(texts: Iterable[str]) -> Iterator[str]:
    """The lines of an event stream as the SSE spec splits them: at CR, LF or CRLF only.
    (str.splitlines, and so httpx's iter_lines, also splits at U+2028, U+0085 and others,
    which vLLM leaves raw in its JSON when a token holds one: that cuts an event in two.)"""
    from httpx_sse._decoders import SSELineDecoder  # httpx-sse 0.4: EventSource.iter_sse splits with it

    splitter = SSELineDecoder()
    for text in texts:
        yield from splitter.decode(text)
    yield from splitter.flush()


def _events_and_comments(response: httpx.Response, on_wait: Callable[[str], None] | None) -> Iterator[Any]:
    """The stream's events, as httpx-sse decodes them, with each comment line handed to
    `on_wait` (its public iterator drops comments, which the gateway's waits are)."""
    from httpx_sse._decoders import SSEDecoder  # httpx-sse 0.4: EventSource.iter_sse uses this decoder

    decoder = SSEDecoder()
    for line in sse_lines(response.iter_text()):
        if line.startswith(":"):
            if on_wait and line[1:].strip():
                on_wait(line[1:].strip())
            continue
        event = decoder.decode(line.rstrip("\n"))
        if event is not None:
            yield event

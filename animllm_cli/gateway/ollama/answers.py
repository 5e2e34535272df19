"""The engine's answer, in Ollama's form: its OpenAI event stream as NDJSON chunks, or folded
into one object where the client asked for no stream; its errors as `{"error": "..."}`.

`OllamaReply` wraps whatever the relay answered (gateway/relay.py: a RelayResponse, a
WaitingStream that hears what it waits for, or an error) and translates what it sends on
the way out, so that the relay's bounds, failovers and crash handling hold for these routes
as for the others. While a request waits for a load, the relay's waiting comments become
chunks with empty content (Ollama's clients parse every line as JSON: a comment would end
their stream). Tool calls, which the engine streams in pieces, leave whole in one chunk.

The timing fields are what the gateway measured, in nanoseconds: `load_duration` is the wait
for the switch that loaded the model (from arrival until the relay sent the request to its
engine; 0 when the model was ready), `prompt_eval_duration` from then until the first token,
`eval_duration` from the first token to the last; the counts are vLLM's usage.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from httpx_sse._decoders import SSEDecoder  # httpx-sse 0.4: the decoder its EventSource uses
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from animllm_cli.gateway.dialects import STREAM_ERROR_STATUS
from animllm_cli.gateway.relay import SENT_AT

NDJSON = b"application/x-ndjson"


def created_at() -> str:
    """Now, as Go writes a time.Time (RFC 3339, UTC)."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def error_text(body: bytes) -> str:
    """The message of an error answer in OpenAI's shape (the gateway's, or vLLM's), else its text."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:500] or "the request failed"
    if isinstance(payload, dict) and payload.get("object") == "error":  # vLLM's own error shape (older releases)
        return str(payload.get("message"))
    problem = payload.get("error", payload.get("detail")) if isinstance(payload, dict) else None
    if isinstance(problem, dict):
        return str(problem.get("message") or problem)
    return str(problem if problem is not None else payload)


def ollama_error(response: Response) -> JSONResponse:
    """Any error answer as Ollama's `{"error": "..."}`, its status and Retry-After kept."""
    retry = response.headers.get("retry-after")
    return JSONResponse({"error": error_text(bytes(response.body))}, status_code=response.status_code,
                        headers={"retry-after": retry} if retry else None)


@dataclass
class Timing:
    """When the request arrived, and whether its model was ready then (monotonic ns)."""
    arrived_ns: int
    waited_for_load: bool
    first_token_ns: int | None = None
    last_token_ns: int | None = None

    def token(self) -> None:
        now = time.monotonic_ns()
        self.first_token_ns = self.first_token_ns or now
        self.last_token_ns = now

    def fields(self, sent_ns: int | None, usage: dict[str, Any]) -> dict[str, int]:
        now = time.monotonic_ns()
        sent = sent_ns or self.arrived_ns
        first = self.first_token_ns or now
        return {"total_duration": now - self.arrived_ns,
                "load_duration": sent - self.arrived_ns if self.waited_for_load else 0,
                "prompt_eval_count": int(usage.get("prompt_tokens") or 0), "prompt_eval_duration": first - sent,
                "eval_count": int(usage.get("completion_tokens") or 0),
                "eval_duration": (self.last_token_ns or now) - first}


@dataclass
class Folding:
    """One answer being made from the engine's events: what was said, and how it ended."""
    kind: str                  # chat | generate
    model: str                 # the name the client asked for, as Ollama echoes it
    timing: Timing
    content: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # index -> id, name, arguments (pieces joined)
    finish: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)

    def chunk(self, text: str = "", thought: str = "", calls: list[dict] | None = None,
              logprobs: list[dict] | None = None, done: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": created_at()}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thought:
                message["thinking"] = thought
            if calls:
                message["tool_calls"] = calls
            out["message"] = message
        else:
            out["response"] = text
            if thought:
                out["thinking"] = thought
            if calls:
                out["tool_calls"] = calls
        if logprobs:
            out["logprobs"] = logprobs
        out["done"] = done
        return out

    def read(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Take one OpenAI chunk in; the Ollama chunk it makes, if it says anything."""
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        choices = event.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        self.finish = choice.get("finish_reason") or self.finish
        delta = choice.get("delta") or {}
        text = (delta.get("content") if self.is_chat_event(choice) else choice.get("text")) or ""
        thought = delta.get("reasoning_content") or delta.get("reasoning") or ""
        for call in delta.get("tool_calls") or []:
            self._call_piece(call)
        logprobs = _logprobs(choice.get("logprobs"))
        if text or thought:
            self.timing.token()
        self.content.append(text)
        self.thinking.append(thought)
        self.logprobs += logprobs
        return self.chunk(text, thought, logprobs=logprobs) if text or thought or logprobs else None

    @staticmethod
    def is_chat_event(choice: dict[str, Any]) -> bool:
        return "delta" in choice

    def _call_piece(self, piece: dict[str, Any]) -> None:
        self.timing.token()
        call = self.calls.setdefault(int(piece.get("index") or 0), {"id": None, "name": "", "arguments": ""})
        call["id"] = piece.get("id") or call["id"]
        function = piece.get("function") or {}
        call["name"] += function.get("name") or ""
        call["arguments"] += function.get("arguments") or ""

    def tool_calls(self) -> list[dict[str, Any]]:
        """The calls made, whole, with their arguments as an object (Ollama's clients take no string)."""
        made = []
        for index, call in sorted(self.calls.items()):
            try:
                arguments = json.loads(call["arguments"] or "{}")
            except ValueError:
                arguments = {"_unparsed_arguments": call["arguments"]}  # kept, never dropped
            made.append({**({"id": call["id"]} if call["id"] else {}),
                         "function": {"index": index, "name": call["name"],
                                      "arguments": arguments if isinstance(arguments, dict) else {"value": arguments}}})
        return made

    def final(self, sent_ns: int | None, whole: bool) -> dict[str, Any]:
        """The last chunk (or, `whole`, the one answer): how it ended, and the timings."""
        calls = self.tool_calls()
        if whole:
            out = self.chunk("".join(self.content), "".join(self.thinking), calls, self.logprobs, done=True)
        else:
            out = self.chunk(done=True)
        reason = self.finish or "stop"
        out["done_reason"] = "stop" if reason == "tool_calls" else reason
        return {**out, **self.timing.fields(sent_ns, self.usage)}

    def waiting(self) -> dict[str, Any]:
        """A chunk that says nothing: sent while the request waits for a load (proxies see bytes flow)."""
        return self.chunk()


def _logprobs(given: Any) -> list[dict[str, Any]]:
    """OpenAI's logprobs in Ollama's shape: chat's (`content`: token, logprob, top_logprobs)
    or completions' (`tokens`, `token_logprobs`, `top_logprobs` as {token: logprob})."""
    if not isinstance(given, dict):
        return []
    if isinstance(given.get("tokens"), list):
        tops = given.get("top_logprobs") or [None] * len(given["tokens"])
        return [{"token": token, "logprob": logprob,
                 "top_logprobs": [{"token": t, "logprob": lp} for t, lp in (top or {}).items()]}
                for token, logprob, top in zip(given["tokens"], given.get("token_logprobs") or [], tops)]
    if not isinstance(given.get("content"), list):
        return []
    return [{"token": item.get("token"), "logprob": item.get("logprob"),
             "top_logprobs": [{"token": t.get("token"), "logprob": t.get("logprob")}
                              for t in item.get("top_logprobs") or []]}
            for item in given["content"] if isinstance(item, dict)]


Send = Callable[[dict[str, Any]], Awaitable[None]]


class OllamaReply(Response):
    """The relay's answer to a chat or generate request, translated on its way out: NDJSON
    chunks as the engine's events arrive, or (not streamed) one object at the end; an error
    before anything was sent with its status, after as a last `{"error": ...}` line."""

    def __init__(self, inner: Response, folding: Folding, request: Request, stream: bool,
                 on_end: Callable[[], None] | None = None) -> None:
        """`request`: the one the relay sent on (it notes when); `on_end`: called once the
        answer has ended whole (the request's keep_alive takes effect then; not after a failure)."""
        self.inner, self.folding, self.request, self.stream, self.on_end = inner, folding, request, stream, on_end
        self.status_code = 200
        self.background = None
        self._decoder = SSEDecoder()
        self._status: int | None = None      # the inner answer's status
        self._media = ""
        self._held: list[bytes] = []          # an error answer's body, until it ends
        self._retry_after: bytes | None = None
        self._started = False                 # our own head is sent
        self._ended = False                   # the last chunk (or an error) is sent
        self._sent_all = False                # the body's last part is sent
        self._complete = False                # the engine's answer ended with its [DONE]
        self._pending = b""                   # a line not yet ended

    async def __call__(self, scope: Any, receive: Any, send: Send) -> None:
        async def translate(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self._status = message["status"]
                headers = dict(message.get("headers") or [])
                self._media = headers.get(b"content-type", b"").decode()
                self._retry_after = headers.get(b"retry-after")
                return
            body, more = message.get("body", b""), message.get("more_body", False)
            if self._status != 200 or not self._media.startswith("text/event-stream"):
                self._held.append(body)
                if not more:
                    await self._error_answer(send)
                return
            # Lines end at \n alone: a chunk may hold U+2028 and the like raw inside its JSON,
            # which str.splitlines would cut it at.
            *lines, self._pending = (self._pending + body).split(b"\n")
            for line in lines:
                await self._line(line.removesuffix(b"\r").decode(errors="replace"), send)
            if not more:
                if self._pending:  # a last event without its line end: complete all the same
                    await self._line(self._pending.decode(errors="replace"), send)
                await self._line("", send)
                await self._close(send)

        await self.inner(scope, receive, translate)
        if self._complete and self.on_end is not None:
            self.on_end()

    async def _line(self, line: str, send: Send) -> None:
        if self._ended:
            return
        if line.startswith(":"):  # the relay's waiting comment
            if self.stream and line[1:].strip():
                await self._send_chunk(self.folding.waiting(), send)
            return
        event = self._decoder.decode(line)
        if event is None or not event.data:
            return
        if event.data.strip() == "[DONE]":
            await self._finish(send)
            self._complete = True
            return
        try:
            payload = json.loads(event.data)
        except ValueError:
            return
        if isinstance(payload, dict) and (payload.get("error") is not None or payload.get("object") == "error"):
            await self._fail(error_text(event.data.encode()), _status_of(payload.get("error") or payload), send)
            return
        chunk = self.folding.read(payload) if isinstance(payload, dict) else None
        if chunk is not None and self.stream:
            await self._send_chunk(chunk, send)

    async def _finish(self, send: Send) -> None:
        final = self.folding.final(getattr(self.request.state, SENT_AT, None), whole=not self.stream)
        if self.stream:
            if self.folding.calls:  # the calls, whole, in a chunk of their own before the last
                await self._send_chunk(self.folding.chunk(calls=self.folding.tool_calls()), send)
            await self._send_chunk(final, send)
        else:
            await self._whole(200, final, send)
        self._ended = True

    async def _fail(self, message: str, status: int, send: Send) -> None:
        if self._started:
            await self._send_chunk({"error": message}, send)
        else:
            await self._whole(status, {"error": message}, send)
        self._ended = True

    async def _close(self, send: Send) -> None:
        if not self._ended:  # the engine's stream ended without [DONE] or an error: never a made-up end
            await self._fail("the engine's answer ended before it was complete", 502, send)
        if not self._sent_all:
            self._sent_all = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _error_answer(self, send: Send) -> None:
        """The relay's answer was an error: Ollama's error, its status and Retry-After kept.
        A success that is no event stream is none the engine should give: a 502."""
        body = b"".join(self._held)
        if self._status == 200:
            message = f"the engine answered {self._media or 'no content type'}, not the event stream it was asked for"
            await self._whole(502, {"error": message}, send)
        else:
            await self._whole(self._status or 500, {"error": error_text(body)}, send, self._retry_after)
        self._ended = True

    async def _send_chunk(self, chunk: dict[str, Any], send: Send) -> None:
        if not self._started:
            self._started = True
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", NDJSON), (b"cache-control", b"no-cache")]})
        await send({"type": "http.response.body", "body": json.dumps(chunk).encode() + b"\n", "more_body": True})

    async def _whole(self, status: int, payload: dict[str, Any], send: Send, retry_after: bytes | None = None) -> None:
        body = json.dumps(payload).encode()
        self._started = self._sent_all = True
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + ([(b"retry-after", retry_after)] if retry_after else [])})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _status_of(problem: Any) -> int:
    """The status an error event stands for, had it come before the stream began."""
    if not isinstance(problem, dict):
        return 500
    code, kind = problem.get("code"), problem.get("type")
    if isinstance(code, int) and 400 <= code < 600:  # vLLM's own errors carry their status
        return code
    return STREAM_ERROR_STATUS.get(kind, 502 if kind == "engine_error" else 500)

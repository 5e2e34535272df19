"""What one request of a client used, read off its answer on the way out: how it ended, the
tokens in and out (the engine's own usage: OpenAI's `usage`, the Responses API's and
Anthropic's `input_tokens`/`output_tokens`, in the body or in the stream's events), and the
switch it waited for. Only where clients are configured (gateway/clients.py): a gateway
without them reads nothing of its answers.

A streamed chat or completion whose client did not ask for the usage chunk
(`stream_options.include_usage`) gets it asked for on its behalf (routes_clients.py), and
that chunk is taken out of the stream here: the client sees the stream it asked for, the
count is exact.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from starlette.responses import Response

from animllm_cli.gateway.clients import Client, Clients
from animllm_cli.gateway.metrics import GatewayMetrics

USAGE_MARK = b'"usage"'
ERROR_MARKS = (b'data: {"error"', b"event: error", b'"object": "error"', b'"object":"error"')


def usage_in(payload: Any) -> dict[str, Any] | None:
    """The usage an answer or an event carries: its own, or its response's or message's
    (the Responses API's `response.completed`, Anthropic's `message_start`)."""
    if not isinstance(payload, dict):
        return None
    for holder in (payload, payload.get("response"), payload.get("message")):
        if isinstance(holder, dict) and isinstance(holder.get("usage"), dict):
            return holder["usage"]
    return None


class Tally:
    """The tokens an answer reported: the latest of each count (a stream may say them twice)."""

    def __init__(self) -> None:
        self.tokens_in = self.tokens_out = 0

    def read(self, usage: dict[str, Any]) -> None:
        given_in = usage.get("prompt_tokens", usage.get("input_tokens"))
        given_out = usage.get("completion_tokens", usage.get("output_tokens"))
        self.tokens_in = int(given_in) if isinstance(given_in, (int, float)) else self.tokens_in
        self.tokens_out = int(given_out) if isinstance(given_out, (int, float)) else self.tokens_out


def _data_of(event: bytes) -> bytes | None:
    """An event's data line (after its `event:` line, if it has one)."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def _without_usage_chunk(body: bytes, tally: Tally) -> bytes:
    """The events of `body` with the usage-only chunk (no choices) read and taken out."""
    kept = []
    for event in body.split(b"\n\n"):
        data = _data_of(event)
        if data and USAGE_MARK in data:
            try:
                payload = json.loads(data)
            except ValueError:
                payload = None
            usage = usage_in(payload)
            if usage is not None:
                tally.read(usage)
                if "choices" in payload and not payload["choices"]:  # OpenAI's usage chunk, asked for the record
                    continue
        kept.append(event)
    return b"\n\n".join(kept)


class Accounted(Response):
    """`inner` as it goes to the client, with what it used recorded once it has ended."""

    def __init__(self, inner: Response, clients: Clients, metrics: GatewayMetrics, client: Client, model: str,
                 waited_s: Callable[[], float], strip_usage: bool) -> None:
        self.inner, self.clients, self.metrics, self.client, self.model = inner, clients, metrics, client, model
        self.waited_s, self.strip_usage = waited_s, strip_usage
        self.status_code = inner.status_code
        self.background = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        tally, status, failed, streamed, whole = Tally(), 500, False, False, []

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status, failed, streamed
            if message["type"] == "http.response.start":
                status = message["status"]
                streamed = dict(message.get("headers") or []).get(b"content-type", b"").startswith(b"text/event-stream")
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if streamed and body:
                    failed = failed or any(mark in body for mark in ERROR_MARKS)
                    if USAGE_MARK in body:
                        body = _without_usage_chunk(body, tally) if self.strip_usage else _read_usage(body, tally)
                        message = {**message, "body": body}
                elif body and status == 200:
                    whole.append(body)
            await send(message)

        try:
            await self.inner(scope, receive, watch)
        finally:
            if whole:
                _read_usage_of_body(b"".join(whole), tally)
            outcome = "ok" if status == 200 and not failed else "stream_error" if status == 200 else f"http_{status}"
            self.record(outcome, tally)

    def record(self, outcome: str, tally: Tally) -> None:
        record(self.clients, self.metrics, self.client, self.model, outcome, tally.tokens_in, tally.tokens_out,
               self.waited_s())


def _read_usage(body: bytes, tally: Tally) -> bytes:
    _without_usage_chunk(body, tally)
    return body


def _read_usage_of_body(body: bytes, tally: Tally) -> None:
    """The usage of a whole answer: its last `"usage": {...}` object, parsed alone (an
    answer may be megabytes of embeddings; vLLM writes its usage last)."""
    at = body.rfind(USAGE_MARK)
    start = body.find(b"{", at) if at >= 0 else -1
    if start < 0:
        return
    try:
        usage, _ = json.JSONDecoder().raw_decode(body[start:].decode(errors="replace"))
    except ValueError:
        return
    if isinstance(usage, dict):
        tally.read(usage)


def record_answer(clients: Clients, metrics: GatewayMetrics, client: Client, model: str, response: Response,
                  waited_s: float) -> None:
    """A whole answer (or an error) of `client`: its outcome and the usage its body reports."""
    tally = Tally()
    if response.status_code == 200:
        _read_usage_of_body(bytes(response.body), tally)
    outcome = "ok" if response.status_code == 200 else f"http_{response.status_code}"
    record(clients, metrics, client, model, outcome, tally.tokens_in, tally.tokens_out, waited_s)


def record(clients: Clients, metrics: GatewayMetrics, client: Client, model: str, outcome: str, tokens_in: int = 0,
           tokens_out: int = 0, waited_s: float = 0.0) -> None:
    """One request of `client`: its metrics (by name) and its row in the usage record."""
    metrics.client_requests.labels(client.name, model, outcome).inc()
    if tokens_in:
        metrics.client_tokens.labels(client.name, model, "in").inc(tokens_in)
    if tokens_out:
        metrics.client_tokens.labels(client.name, model, "out").inc(tokens_out)
    if waited_s:
        metrics.client_switch_wait.labels(client.name, model).inc(waited_s)
    clients.record(client, model, outcome, tokens_in, tokens_out, waited_s)


def waited_since(arrived: float, loading: bool, sent_ns: Callable[[], int | None]) -> Callable[[], float]:
    """The switch a request waited for, in seconds: from its arrival until the relay sent it
    (monotonic), where its model was not ready when it came; else 0."""
    def waited() -> float:
        sent = sent_ns()
        return max(0.0, sent / 1e9 - arrived) if loading and sent else 0.0
    return waited


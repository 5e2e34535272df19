"""An event stream is split into lines at CR, LF and CRLF only (the SSE spec). vLLM writes
its JSON with non-ASCII left raw, so a token that holds U+2028, U+2029 or U+0085 puts one
of those inside an event: str.splitlines (and httpx's iter_lines) would cut the event there,
and `chat`/`bench` would fail on half an event's JSON."""

from __future__ import annotations

import json

import httpx
import pytest

from animllm_cli.client.openai import ChatResult, OpenAIClient, sse_lines

SEPARATORS = ["\u2028", "\u2029", "\u0085"]  # str.splitlines splits at each, SSE at none; JSON leaves them raw


def chunk(content: str) -> str:
    delta = {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}], "model": "m"}
    return "data: " + json.dumps(delta, ensure_ascii=False) + "\n\n"


def stream_body(contents: list[str]) -> bytes:
    return ("".join(chunk(c) for c in contents) + "data: [DONE]\n\n").encode()


def test_the_lines_split_at_cr_lf_and_crlf_only() -> None:
    text = "a\u2028b\rc\r\nd\ne\u0085f"
    assert list(sse_lines([text[:3], text[3:9], text[9:]])) == ["a\u2028b", "c", "d", "e\u0085f"]


@pytest.mark.parametrize("separator", SEPARATORS, ids=[f"U+{ord(s):04X}" for s in SEPARATORS])
def test_a_token_holding_a_unicode_line_separator_streams_whole(separator: str) -> None:
    contents = ["one", f"two{separator}three", "four"]
    body = stream_body(contents)
    # Bytes arrive in pieces that cut the separator's own UTF-8 bytes too.
    pieces = [body[i:i + 7] for i in range(0, len(body), 7)]
    transport = httpx.MockTransport(lambda request: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=iter(pieces)))
    client = OpenAIClient("http://gateway.test")
    client._http = httpx.Client(base_url="http://gateway.test", transport=transport)
    result = ChatResult()
    assert "".join(client.chat_stream({"model": "m", "messages": []}, result)) == "".join(contents)
    assert result.text == "".join(contents)

"""What Ollama's requests mean to the engine, and what the engine's stream means to Ollama's
clients, case by case: keep_alive's forms, tool calls and their results, thinking, and the
fields animllm cannot keep (refused by name). The routes that carry them are tested in
test_ollama_with_fake.py; these are the cases a fake engine does not produce."""

from __future__ import annotations

import json

import pytest

from animllm_cli.gateway.ollama.answers import Folding, Timing
from animllm_cli.gateway.ollama.requests import (BadRequest, Capabilities, chat_call, chat_messages, generate_call,
                                                 keep_alive_s)

ALL = Capabilities(thinking=True, tools=True, vision=True)
PLAIN = Capabilities()


@pytest.mark.parametrize("given, seconds", [
    ("5m", 300.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("250ms", 0.25), ("0", 0.0), (0, 0.0), (10, 10.0),
    (2.5, 2.5), (-1, -1.0), ("-1m", -1.0), ("-5", None), (None, None)])
def test_keep_alive_takes_go_durations_and_seconds(given, seconds) -> None:
    if given == "-5":  # a number in a string has no unit: Ollama refuses it too
        with pytest.raises(BadRequest, match="not a duration"):
            keep_alive_s(given)
        return
    assert keep_alive_s(given) == seconds


@pytest.mark.parametrize("given", ["300", "5 minutes", "m", True, [1], {"s": 1}])
def test_keep_alive_refuses_what_is_not_a_duration(given) -> None:
    with pytest.raises(BadRequest, match="keep_alive"):
        keep_alive_s(given)


def test_tool_calls_go_with_ids_and_each_result_answers_its_call() -> None:
    messages = [{"role": "user", "content": "weather in two cities?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Oslo"}}},
                    {"function": {"name": "time", "arguments": {}}},
                    {"function": {"name": "weather", "arguments": {"city": "Lima"}}}]},
                {"role": "tool", "content": "12 C", "tool_name": "weather"},
                {"role": "tool", "content": "noon", "tool_name": "time"},
                {"role": "tool", "content": "20 C", "tool_name": "weather"}]
    out = chat_messages(messages, PLAIN, "m")
    calls = out[1]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == ['{"city": "Oslo"}', "{}", '{"city": "Lima"}']
    assert [c["type"] for c in calls] == ["function"] * 3 and len({c["id"] for c in calls}) == 3
    assert [m["tool_call_id"] for m in out[2:]] == [calls[0]["id"], calls[1]["id"], calls[2]["id"]]


def test_tools_and_thinking_need_an_engine_that_parses_them() -> None:
    ask = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
           "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}
    with pytest.raises(BadRequest, match='"m" does not support tools'):
        chat_call(ask, PLAIN, "m")
    assert chat_call(ask, ALL, "m").body["tools"] == ask["tools"]
    with pytest.raises(BadRequest, match='"m" does not support thinking'):
        chat_call({**ask, "tools": None, "think": True}, PLAIN, "m")
    high = chat_call({**ask, "tools": None, "think": "high"}, ALL, "m").body
    assert high["reasoning_effort"] == "high" and high["chat_template_kwargs"] == {"enable_thinking": True}
    assert chat_call({**ask, "tools": None, "think": False}, PLAIN, "m").body["chat_template_kwargs"] == \
        {"enable_thinking": False}  # turning it off asks nothing of the engine
    with pytest.raises(BadRequest, match="invalid think value"):
        chat_call({**ask, "tools": None, "think": "very"}, ALL, "m")


@pytest.mark.parametrize("field, value", [("template", "{{ .Prompt }}"), ("context", [1, 2, 3]), ("suffix", "}")])
def test_generate_refuses_by_name_what_it_cannot_keep(field, value) -> None:
    with pytest.raises(BadRequest, match=f"`{field}` is not supported"):
        generate_call({"model": "m", "prompt": "x", field: value}, ALL, "m")


def test_images_need_a_vision_model() -> None:
    with pytest.raises(BadRequest, match='"m" does not support images'):
        chat_messages([{"role": "user", "content": "x", "images": ["iVBORw0KGgo="]}], PLAIN, "m")


def chunk(delta: dict | None = None, finish: str | None = None, **more) -> dict:
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, **more}]}


def test_a_tool_call_streamed_in_pieces_leaves_whole_with_its_arguments_as_an_object() -> None:
    folding = Folding("chat", "m", Timing(0, False))
    pieces = [chunk({"role": "assistant", "content": ""}),
              chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "weather", "arguments": ""}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
              chunk(finish="tool_calls"), {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5}}]
    assert [folding.read(p) for p in pieces] == [None] * 6  # nothing half-made reaches the client
    assert folding.tool_calls() == [{"id": "call_1", "function": {"index": 0, "name": "weather",
                                                                  "arguments": {"city": "Oslo"}}}]
    final = folding.final(None, whole=True)
    assert final["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert final["done_reason"] == "stop" and final["eval_count"] == 5 and final["prompt_eval_count"] == 9
    assert all(isinstance(final[k], int) for k in ("total_duration", "load_duration", "prompt_eval_duration",
                                                    "eval_duration"))


def test_thinking_and_log_probabilities_come_apart_from_the_content() -> None:
    folding = Folding("generate", "m", Timing(0, False))
    thought = folding.read(chunk({"reasoning_content": "hmm"}))
    said = folding.read(chunk({"content": "yes"}, logprobs={"content": [
        {"token": "yes", "logprob": -0.1, "top_logprobs": [{"token": "yes", "logprob": -0.1},
                                                           {"token": "no", "logprob": -2.3}]}]}))
    assert thought["thinking"] == "hmm" and thought["response"] == ""
    assert said["response"] == "yes" and said["logprobs"][0]["top_logprobs"][1] == {"token": "no", "logprob": -2.3}
    folding.read(chunk(finish="length"))
    final = folding.final(None, whole=True)
    assert (final["response"], final["thinking"], final["done_reason"]) == ("yes", "hmm", "length")
    assert json.loads(json.dumps(final)) == final


def reply_to(inner_messages: list[dict], stream: bool) -> tuple[list[dict], list[bool]]:
    """What OllamaReply sends for an inner answer that sends `inner_messages`, and whether its on_end ran."""
    import asyncio

    from starlette.requests import Request

    from animllm_cli.gateway.ollama.answers import OllamaReply

    async def inner(scope, receive, send):
        for message in inner_messages:
            await send(message)

    sent: list[dict] = []
    ended: list[bool] = []

    async def run() -> None:
        async def collect(message):
            sent.append(message)
        request = Request({"type": "http", "headers": [], "state": {}})
        reply = OllamaReply(inner, Folding("chat", "m", Timing(0, False)), request, stream,
                            on_end=lambda: ended.append(True))
        await reply({"type": "http"}, None, collect)
    asyncio.run(run())
    return sent, ended


def sse(status: int, media: bytes, *bodies: bytes) -> list[dict]:
    start = {"type": "http.response.start", "status": status, "headers": [(b"content-type", media),
                                                                          (b"retry-after", b"7")]}
    return [start, *({"type": "http.response.body", "body": b, "more_body": True} for b in bodies),
            {"type": "http.response.body", "body": b"", "more_body": False}]


def test_a_chunk_keeps_u2028_and_a_last_event_without_its_blank_line_still_ends_the_answer() -> None:
    event = json.dumps({"choices": [{"index": 0, "delta": {"content": "x\u2028y\u0085z"}}]}, ensure_ascii=False)
    sent, ended = reply_to(sse(200, b"text/event-stream", f"data: {event}\n\n".encode(), b"data: [DONE]"), False)
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"])["message"]["content"] == "x\u2028y\u0085z"
    assert ended == [True] and sent[-1]["more_body"] is False and sum(m["type"] == "http.response.start"
                                                                     for m in sent) == 1
    streamed, _ = reply_to(sse(200, b"text/event-stream", f"data: {event}\n\n".encode()[:30],
                               f"data: {event}\n\n".encode()[30:], b"data: [DONE]\n\n"), True)
    lines = b"".join(m.get("body", b"") for m in streamed).decode().split("\n")
    assert json.loads(lines[0])["message"]["content"] == "x\u2028y\u0085z" and json.loads(lines[1])["done"]


def test_errors_keep_their_status_and_retry_after_and_never_set_keep_alive() -> None:
    busy = json.dumps({"error": {"message": "busy: kv", "type": "server_busy"}}).encode()
    sent, ended = reply_to(sse(503, b"application/json", busy), True)
    assert sent[0]["status"] == 503 and (b"retry-after", b"7") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {"error": "busy: kv"} and ended == []
    odd, ended = reply_to(sse(200, b"application/json", b'{"id": "x"}'), False)
    assert odd[0]["status"] == 502 and "not the event stream" in json.loads(odd[1]["body"])["error"] and not ended
    cut, ended = reply_to(sse(200, b"text/event-stream", b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'),
                          True)
    lines = b"".join(m.get("body", b"") for m in cut).decode().split("\n")
    assert json.loads(lines[-2]) == {"error": "the engine's answer ended before it was complete"} and not ended

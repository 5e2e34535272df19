"""Ollama's API through the real gateway to fake engines, with Ollama's own Python client
where it can say it: options reaching the engine as vLLM's sampling parameters, images as
image parts, NDJSON whole line by line from a slow engine and through a load, errors in
Ollama's shape (typed by its client, in a stream as its last line), keep_alive as Ollama
means it, embeddings, and every route that has no meaning here refused with its reason."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import ollama
import pytest

from tests.support.gateways import fake_gateway_config, start_bound_s
from tests.support.waiting import wait_until

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
HI = [{"role": "user", "content": "hi"}]


def client(gw, key: str | None = None) -> ollama.Client:
    headers = {"authorization": f"Bearer {key}"} if key else None
    return ollama.Client(host=gw.url, timeout=start_bound_s(gw.gateway.loaded) + 30, headers=headers)


def streamed(gw) -> list[dict]:
    return [r for r in gw.requests_seen() if r.get("stream") and not r.get("gone")]


def test_the_ollama_client_lists_chats_generates_and_embeds(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path))
    ask = client(gw)
    assert [m.model for m in ask.list().models] == ["a", "b", "v"]
    assert httpx.get(f"{gw.url}/api/version").json()["version"]
    assert httpx.get(gw.url).text == "Ollama is running"

    answer = ask.chat(model="a", messages=HI, options={"num_predict": 3})
    assert answer.message.role == "assistant" and answer.message.content == "t0 t1 t2 "
    assert answer.done and answer.done_reason == "stop" and answer.eval_count == 3 and answer.prompt_eval_count == 3
    assert answer.load_duration == 0 and answer.total_duration >= answer.prompt_eval_duration + answer.eval_duration

    chunks = list(ask.chat(model="alpha:latest", messages=HI, options={"num_predict": 4}, stream=True))
    assert "".join(c.message.content for c in chunks) == "t0 t1 t2 t3 "
    assert [c.done for c in chunks] == [False] * 4 + [True] and chunks[-1].eval_count == 4
    assert chunks[0].model == "alpha:latest"  # the name the client asked for, as Ollama echoes it

    generated = ask.generate(model="a", prompt="say", system="be brief", options={"num_predict": 2})
    assert generated.response == "t0 t1 " and generated.done_reason == "stop"
    sent = streamed(gw)[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say"}]
    raw = ask.generate(model="a", prompt="<|im_start|>", raw=True, options={"num_predict": 2})
    assert raw.response == "t0 t1 " and streamed(gw)[-1]["path"] == "/v1/completions"

    embedded = ask.embed(model="a", input=["one", "three"])
    assert embedded.embeddings == [[0.0, 3.0], [1.0, 5.0]] and embedded.prompt_eval_count == 4
    assert ask.embeddings(model="a", prompt="four").embedding == [0.0, 4.0]

    running = ask.ps().models
    assert [m.model for m in running] == ["a"] and running[0].context_length == 1024
    shown = ask.show("a")
    assert shown.modelinfo["general.architecture"] and "completion" in shown.capabilities


def test_options_format_and_think_reach_the_engine_as_vllm_sampling(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path))
    options = {"num_predict": 2, "temperature": 0.2, "top_p": 0.8, "top_k": 5, "min_p": 0.05, "seed": 7,
               "stop": ["END"], "repeat_penalty": 1.1, "presence_penalty": 0.3, "frequency_penalty": 0.4,
               "num_ctx": 4096, "typical_p": 0.9, "mirostat": 1, "num_gpu": 99}  # the last four: no vLLM meaning
    client(gw).chat(model="a", messages=HI, options=options, format="json", think=False)
    body = streamed(gw)[-1]["body"]
    assert {k: body[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
                                 "repetition_penalty", "presence_penalty", "frequency_penalty")} == \
        {"max_tokens": 2, "temperature": 0.2, "top_p": 0.8, "top_k": 5, "min_p": 0.05, "seed": 7, "stop": ["END"],
         "repetition_penalty": 1.1, "presence_penalty": 0.3, "frequency_penalty": 0.4}
    assert not {"num_ctx", "typical_p", "mirostat", "num_gpu", "options", "keep_alive", "think", "format"} & set(body)
    assert body["response_format"] == {"type": "json_object"}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    client(gw).generate(model="a", prompt="count", format=schema, options={"num_predict": 1})
    assert streamed(gw)[-1]["body"]["response_format"] == {"type": "json_schema",
                                                          "json_schema": {"name": "format", "schema": schema}}
    client(gw).chat(model="a", messages=HI, think="high", options={"num_predict": 1})
    assert streamed(gw)[-1]["body"]["chat_template_kwargs"] == {"enable_thinking": True}  # the fake's `a` has no
    assert streamed(gw)[-1]["body"]["reasoning_effort"] == "high"  # files: its engine is left to judge
    with pytest.raises(ollama.ResponseError) as wrong:
        client(gw).chat(model="a", messages=HI, options={"temperature": "hot"})
    assert wrong.value.status_code == 400 and wrong.value.error == 'option "temperature" must be a number, got "hot"'


def test_images_reach_the_engine_as_image_parts(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path), preload=["v"], model="v")
    ask = client(gw)
    ask.chat(model="v", messages=[{"role": "user", "content": "what is this?", "images": [PNG]}],
             options={"num_predict": 1})
    url = f"data:image/png;base64,{base64.b64encode(PNG).decode()}"
    assert streamed(gw)[-1]["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]
    ask.generate(model="vision", prompt="and this?", images=[PNG], options={"num_predict": 1})
    assert streamed(gw)[-1]["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": url}}
    bad = httpx.post(f"{gw.url}/api/chat", json={"model": "v", "messages": [
        {"role": "user", "content": "x", "images": ["not base64!"]}]}, timeout=30)
    assert bad.status_code == 400 and bad.json() == {"error": "messages[0].images[0] is not valid base64"}


def test_ndjson_comes_whole_line_by_line_from_a_slow_engine_and_through_a_load(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path, chunk_delay=0.3))
    gw.gateway.loading_comment_s = 0.05
    ask = {"model": "a", "messages": HI, "options": {"num_predict": 4}}
    with httpx.stream("POST", f"{gw.url}/api/chat", json=ask, timeout=start_bound_s(gw.gateway.loaded) + 30) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = r.iter_lines()
        first = json.loads(next(lines))
        assert streamed(gw) == []  # the engine had not finished: the chunk came as it was made
        rest = [json.loads(line) for line in lines]
    assert first["message"]["content"] == "t0 " and not first["done"]
    assert [c["done"] for c in rest] == [False] * 3 + [True] and "eval_duration" in rest[-1]

    loading = {"model": "b", "messages": HI, "options": {"num_predict": 2}}  # b waits for its load
    with httpx.stream("POST", f"{gw.url}/api/chat", json=loading, timeout=start_bound_s(gw.gateway.loaded) + 30) as r:
        body = r.read()
    chunks = [json.loads(line) for line in body.decode().split("\n")[:-1]]  # each line a whole object, \n-ended
    waiting = [c for c in chunks if not c["done"] and not c["message"]["content"]]
    assert waiting and chunks[-1]["done"] and chunks[-1]["load_duration"] > 0
    assert "".join(c["message"]["content"] for c in chunks) == "t0 t1 "


def test_errors_come_in_ollama_shape_before_and_during_a_stream(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path, limits={"max_body_bytes": 4096}), key="gateway-secret")
    ask = client(gw, key="gateway-secret")
    with pytest.raises(ollama.ResponseError) as unknown:
        ask.chat(model="nope", messages=HI)
    assert unknown.value.status_code == 404 and unknown.value.error.startswith("model 'nope' not found")
    with pytest.raises(ollama.ResponseError) as wrong_key:
        client(gw, key="wrong").list()
    assert wrong_key.value.status_code == 401 and "API key" in wrong_key.value.error
    with pytest.raises(ollama.ResponseError) as too_large:
        ask.chat(model="a", messages=[{"role": "user", "content": "x" * 10_000}])
    assert too_large.value.status_code == 413 and "max_body_bytes" in too_large.value.error
    with pytest.raises(ollama.ResponseError) as bad_keep:
        ask.chat(model="a", messages=HI, keep_alive="300")
    assert bad_keep.value.status_code == 400 and "keep_alive '300' is not a duration" in bad_keep.value.error
    keyed = {"authorization": "Bearer gateway-secret"}
    for path, body, said in [
            ("/api/show", {}, "model is required"),
            ("/api/chat", {"model": "a", "messages": "hi"}, "messages must be a list"),
            ("/api/chat", {"model": "a", "messages": HI, "options": [1]}, "options must be an object"),
            ("/api/generate", {"model": "a", "prompt": 7}, "prompt must be a string"),
            ("/api/generate", {"model": "a", "prompt": "x", "raw": True, "system": "s"},
             "raw mode does not support template, system, or context"),
            ("/api/embed", {"model": "a", "input": [1]}, "invalid input type")]:
        refused = httpx.post(f"{gw.url}{path}", json=body, headers=keyed, timeout=30)
        assert (refused.status_code, refused.json()) == (400, {"error": said}), (path, body)
    by_name = httpx.post(f"{gw.url}/api/chat", json={"name": "a", "messages": HI, "stream": False}, headers=keyed,
                         timeout=30)  # `name` for `model`: older clients
    assert by_name.status_code == 200 and by_name.json()["model"] == "a"
    shown = httpx.post(f"{gw.url}/api/show", json={"name": "a"}, headers=keyed, timeout=30).json()
    assert shown["parameters"].split("\n")[0].split() == ["num_ctx", "1024"]  # Continue reads the context here

    dying = gateways(fake_gateway_config(tmp_path / "dying", mode="die-mid-stream", after=2, chunk_delay=0.2))
    with pytest.raises(ollama.ResponseError) as mid_stream:  # Ollama's client raises on an error line
        list(client(dying).chat(model="a", messages=HI, options={"num_predict": 6}, stream=True))
    assert "stopped mid-answer" in mid_stream.value.error and mid_stream.value.status_code == -1
    dying_again = gateways(fake_gateway_config(tmp_path / "dying-again", mode="die-mid-stream", after=2))
    with pytest.raises(ollama.ResponseError) as not_streamed:  # nothing sent yet: the status says it
        client(dying_again).chat(model="a", messages=HI, options={"num_predict": 6})
    assert not_streamed.value.status_code == 502 and "died" in not_streamed.value.error


def test_keep_alive_as_ollama_means_it(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path, sections={"pool": {"keep_alive": -1}}))
    gw.gateway.keep_alive_interval_s = 0.1
    ask = client(gw)
    bound = start_bound_s(gw.gateway.loaded)
    loaded = ask.generate(model="b")  # nothing to answer: it loads b
    assert loaded.done_reason == "load" and loaded.response == "" and "b" in gw.gateway.pool.models

    ask.chat(model="b", messages=HI, options={"num_predict": 1}, keep_alive="10m")
    [expiry] = [m.expires_at for m in ask.ps().models if m.model == "b"]
    assert timedelta(minutes=9) < expiry - datetime.now(timezone.utc) <= timedelta(minutes=10)
    ask.chat(model="b", messages=HI, options={"num_predict": 1}, keep_alive=-1)
    [forever] = [m.expires_at for m in ask.ps().models if m.model == "b"]
    assert forever.year > 2200

    ask.chat(model="b", messages=HI, options={"num_predict": 1}, keep_alive=0)  # unloaded once answered
    wait_until(lambda: "b" not in gw.gateway.pool.models, bound, "b to be unloaded after keep_alive 0")
    ask.generate(model="a")
    unloaded = ask.generate(model="a", keep_alive=0)
    assert unloaded.done_reason == "unload" and "a" not in gw.gateway.pool.models and ask.ps().models == []


REFUSED = [("POST", "/api/create", "Modelfiles"), ("POST", "/api/copy", "aliases"), ("DELETE", "/api/delete", "config"),
           ("POST", "/api/push", "pushes them nowhere"), ("POST", f"/api/blobs/sha256:{'0' * 64}", "no blobs")]


def test_routes_with_no_meaning_here_are_refused_with_their_reason(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path))
    for method, path, words in REFUSED:
        answer = httpx.request(method, f"{gw.url}{path}", json={"model": "a"}, timeout=30)
        assert answer.status_code == 501, path
        assert path.split("/sha256")[0] in answer.json()["error"] and words in answer.json()["error"], path
    assert httpx.head(f"{gw.url}/api/blobs/sha256:{'0' * 64}", timeout=30).status_code == 501
    ask = client(gw)
    for refused in (lambda: ask.create(model="x", from_="a"), lambda: ask.copy("a", "a2"), lambda: ask.delete("a"),
                    lambda: ask.push("a")):
        with pytest.raises(ollama.ResponseError) as said:
            refused()
        assert said.value.status_code == 501 and "is not offered by animllm" in said.value.error


def test_curls_json_labelled_a_form_is_taken_but_not_from_another_pages_form(tmp_path: Path, gateways) -> None:
    """`curl -d` sends Ollama's JSON as application/x-www-form-urlencoded, and Ollama's docs
    show it so: taken. A page served by another local server may post that (or GET) without
    asking first: refused without the key. Its JSON needs a preflight, which no page gets."""
    gw = gateways(fake_gateway_config(tmp_path))
    body = json.dumps({"model": "a", "prompt": "hi", "stream": False, "options": {"num_predict": 1}})
    form = {"content-type": "application/x-www-form-urlencoded"}
    with httpx.Client(base_url=gw.url, timeout=start_bound_s(gw.gateway.loaded) + 30) as http:
        assert http.post("/api/generate", content=body, headers=form).json()["response"] == "t0 "
        page = http.post("/api/generate", content=body, headers={**form, "origin": "http://localhost:9"})
        assert page.status_code == 403 and "form from http://localhost:9" in page.json()["error"]
        as_json = http.post("/api/generate", content=body, headers={"content-type": "application/json",
                                                                     "origin": "http://localhost:9"})
        assert as_json.status_code == 200
        assert http.get("/api/tags", headers={"origin": "http://localhost:9"}).status_code == 403  # as any GET here
        assert http.get("/api/tags", headers={"origin": gw.url}).status_code == 200


def test_tool_calls_reach_the_client_whole_and_their_results_the_engine(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path))
    ask = client(gw)
    tools = [{"type": "function", "function": {"name": "weather", "description": "the weather in a city",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}, "required": ["city"]}}}]
    chunks = list(ask.chat(model="a", messages=HI, tools=tools, stream=True))
    calls = [c.message.tool_calls for c in chunks if c.message.tool_calls]
    assert len(calls) == 1 and calls[0][0].function.name == "weather"  # whole, in one chunk
    assert calls[0][0].function.arguments == {"city": "Oslo"} and chunks[-1].done_reason == "stop"
    answer = ask.chat(model="a", messages=HI, tools=tools)
    assert [c.function.arguments for c in answer.message.tool_calls] == [{"city": "Oslo"}]
    assert streamed(gw)[-1]["tools"] == tools

    ask.chat(model="a", tools=tools, messages=[*HI, answer.message,
                                             {"role": "tool", "content": "12 C", "tool_name": "weather"}])
    sent = streamed(gw)[-1]["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}
    assert sent[2] == {"role": "tool", "content": "12 C", "tool_call_id": sent[1]["tool_calls"][0]["id"]}


def test_a_pinned_model_is_not_unloaded_by_a_clients_keep_alive(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path, models={"a": {"pin": True}}))
    with pytest.raises(ollama.ResponseError) as pinned:
        client(gw).generate(model="a", keep_alive=0)
    assert pinned.value.status_code == 409 and "pinned" in pinned.value.error
    assert client(gw).generate(model="a").done_reason == "load"  # loaded already: at once
    assert gw.gateway.pool.models == ["a"]

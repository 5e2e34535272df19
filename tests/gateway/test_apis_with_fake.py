"""Every API a studio's clients speak, through the real gateway to fake engines, with the
clients' own SDKs: OpenAI's Responses API (a stored response found on its engine, and told
gone once that engine stopped), Anthropic's Messages API (its errors in its own shape, typed
by its SDK; its stream read through a load's waiting comments), audio uploads as multipart
forms (renamed, held to the body limit, refused on a JSON route), the pooling routes, and a
route the engine's vLLM release lacks."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.support.gateways import fake_gateway_config, remote_fake_vllm, start_bound_s
from tests.support.waiting import wait_until

STORE = {"VLLM_ENABLE_RESPONSES_API_STORE": "1"}


def sdk_timeout(gw) -> float:
    return start_bound_s(gw.gateway.loaded) + 30


def openai_sdk(gw, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=sdk_timeout(gw))


def anthropic_sdk(gw, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=sdk_timeout(gw))


def test_the_messages_api_through_a_load_streamed_and_not(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path))
    gw.gateway.loading_comment_s = 0.05  # the stream waits for b's load hearing comments: the SDK must skip them
    sdk = anthropic_sdk(gw)
    ask = {"max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]}
    with sdk.messages.stream(model="b", **ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.split() == ["t0", "t1", "t2", "t3", "t4"] and final.usage.output_tokens == 5
    assert [s.to_model for s in gw.gateway.pool.switches] == ["a", "b"]
    message = sdk.messages.create(model="code", **ask)  # b's task: the model it names is loaded now
    assert message.content[0].text == "t0 t1 t2 t3 t4" and message.model == "b"
    assert sdk.messages.count_tokens(model="b", messages=ask["messages"]).input_tokens == 3
    seen = [(r.get("path"), r["model"]) for r in gw.requests_seen() if r.get("path", "").startswith("/v1/messages")]
    assert seen == [("/v1/messages", "b")] * 2 + [("/v1/messages/count_tokens", "b")]  # the task became b


def test_anthropic_errors_come_in_anthropic_shape_and_are_typed_by_its_sdk(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path, limits={"max_body_bytes": 4096}), key="gateway-secret")
    sdk = anthropic_sdk(gw, key="gateway-secret")  # the SDK sends its key as x-api-key
    ask = {"max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]}
    assert sdk.messages.create(model="a", **ask).content[0].text  # x-api-key accepted

    with pytest.raises(anthropic.NotFoundError) as unknown:
        sdk.messages.create(model="nope", **ask)
    assert unknown.value.body["type"] == "error" and unknown.value.body["error"]["type"] == "not_found_error"
    assert "model 'nope' not found" in unknown.value.body["error"]["message"]

    with pytest.raises(anthropic.AuthenticationError) as refused:
        anthropic_sdk(gw, key="wrong").messages.create(model="a", **ask)
    assert refused.value.body["error"]["type"] == "authentication_error"

    with pytest.raises(anthropic.APIStatusError) as too_large:
        sdk.messages.create(model="a", max_tokens=5, messages=[{"role": "user", "content": "x" * 10_000}])
    assert too_large.value.status_code == 413 and too_large.value.body["error"]["type"] == "request_too_large"

    # The OpenAI routes keep OpenAI's shape, on the same gateway.
    with pytest.raises(openai.NotFoundError) as openai_unknown:
        openai_sdk(gw, key="gateway-secret").chat.completions.create(model="nope", messages=ask["messages"])
    assert openai_unknown.value.body["code"] == "model_not_found"


def test_a_stream_that_waits_for_a_load_hears_comments_that_neither_sdk_minds(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path))
    gw.gateway.loading_comment_s = 0.05
    ask = {"model": "b", "max_tokens": 3, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gw.url, timeout=sdk_timeout(gw)) as client:
        raw = client.post("/v1/messages", json=ask).text
    assert raw.startswith(": loading b") and "event: message_stop" in raw  # the comments were there
    sdk_gw = gateways(fake_gateway_config(tmp_path / "again"))
    sdk_gw.gateway.loading_comment_s = 0.05
    with anthropic_sdk(sdk_gw).messages.stream(model="b", max_tokens=3, messages=ask["messages"]) as stream:
        assert "".join(stream.text_stream).split() == ["t0", "t1", "t2"]
    events = list(openai_sdk(sdk_gw).responses.create(model="v", input="hi", max_output_tokens=2, stream=True))
    assert events[-1].type == "response.completed"  # v loaded while the stream heard comments


def test_busy_and_deadline_errors_are_typed_by_both_sdks(tmp_path: Path, gateways) -> None:
    busy = gateways(fake_gateway_config(tmp_path, kv=0.99))  # the KV cache full: a 503 before any wait
    wait_until(lambda: busy.gateway.verdict.kv, sdk_timeout(busy), "the admission watcher to see a's full KV cache")
    ask = {"max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        anthropic_sdk(busy).messages.create(model="a", **ask)
    assert overloaded.value.status_code == 503 and overloaded.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(openai.InternalServerError) as openai_busy:
        openai_sdk(busy).responses.create(model="a", input="hi")
    assert openai_busy.value.status_code == 503 and openai_busy.value.body["type"] == "server_busy"

    slow = gateways(fake_gateway_config(tmp_path / "slow", chunk_delay=0.5, limits={"request_timeout_s": 1}))
    with pytest.raises(anthropic.InternalServerError) as late:
        anthropic_sdk(slow).messages.create(model="a", max_tokens=20, messages=ask["messages"])
    assert late.value.status_code == 504 and late.value.body["error"]["type"] == "timeout_error"


def test_a_form_from_another_local_page_needs_the_key(tmp_path: Path, gateways) -> None:
    """A page may post a form without asking first; one served by another local server (another
    port: another origin) is refused, the gateway's own origin is not."""
    gw = gateways(fake_gateway_config(tmp_path))
    form = {"data": {"model": "a"}, "files": {"file": ("x.wav", b"RIFF")}}
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        other_port = client.post("/v1/audio/transcriptions", headers={"origin": "http://localhost:9"}, **form)
        own = client.post("/v1/audio/transcriptions", headers={"origin": gw.url}, **form)
        as_json = client.post("/v1/chat/completions", headers={"origin": "http://localhost:9"},
                              json={"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert other_port.status_code == 403 and "form from http://localhost:9" in other_port.json()["error"]["message"]
    assert own.status_code == 200
    assert as_json.status_code == 200  # JSON needs a preflight, which a page never gets: as before


def test_a_response_stored_by_a_server_elsewhere_is_asked_for_there(tmp_path: Path, gateways) -> None:
    with remote_fake_vllm(tmp_path, served_name="there", env=STORE) as (remote_url, _):
        config = fake_gateway_config(tmp_path, extra_models={"r": {"upstream": {"urls": [remote_url], "model": "there"}}})
        sdk = openai_sdk(gateways(config))
        made = sdk.responses.create(model="r", input="hi", max_output_tokens=2)
        assert sdk.responses.retrieve(made.id).output_text == "t0 t1"
        unstored = sdk.responses.create(model="r", input="hi", max_output_tokens=2, store=False)
        with pytest.raises(openai.NotFoundError) as unknown:
            sdk.responses.retrieve(unstored.id)
        assert unknown.value.code == "response_not_found"  # store: false: nothing to remember


def test_an_anthropic_stream_that_fails_while_it_waits_ends_with_an_error_event(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path, crash_models="org/model-b"))
    gw.gateway.loading_comment_s = 0.05
    with pytest.raises(anthropic.APIStatusError) as failed:
        with anthropic_sdk(gw).messages.stream(model="b", max_tokens=5,
                                               messages=[{"role": "user", "content": "hi"}]) as stream:
            "".join(stream.text_stream)
    assert failed.value.body["type"] == "error" and "could not be loaded" in failed.value.body["error"]["message"]


def test_responses_streamed_and_not_and_a_stored_one_found_until_its_engine_stops(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path, env=STORE))
    gw.gateway.loading_comment_s = 0.05
    sdk = openai_sdk(gw)
    streamed = list(sdk.responses.create(model="b", input="hello", max_output_tokens=3, stream=True))
    assert [e.type for e in streamed][0] == "response.created" and streamed[-1].type == "response.completed"
    made = sdk.responses.create(model="b", input="hello", max_output_tokens=3)
    assert made.output_text == "t0 t1 t2"
    assert sdk.responses.retrieve(made.id).id == made.id
    assert sdk.responses.retrieve(streamed[0].response.id).output_text == "t0 t1 t2"
    follow = sdk.responses.create(model="b", input="more", max_output_tokens=2, previous_response_id=made.id)
    assert follow.previous_response_id == made.id

    with pytest.raises(openai.BadRequestError) as other_model:
        sdk.responses.create(model="a", input="more", previous_response_id=made.id)
    assert "made by 'b'" in other_model.value.message

    sdk.chat.completions.create(model="a", messages=[{"role": "user", "content": "hi"}])  # a evicts b
    with pytest.raises(openai.NotFoundError) as gone:
        sdk.responses.retrieve(made.id)
    assert "stopped since" in gone.value.message and gone.value.code == "response_gone"
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(model="b", input="more", previous_response_id=made.id)
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.responses.retrieve("resp_never_made")
    assert unknown.value.code == "response_not_found"


def test_audio_forms_are_routed_by_their_model_field_renamed_and_held_to_the_limits(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path, limits={"max_body_bytes": 64 * 1024}))
    sdk = openai_sdk(gw)
    heard = sdk.audio.transcriptions.create(model="chat", file=("take.wav", b"RIFF" + b"\0" * 2000))
    assert heard.text == "2004 bytes heard by a"
    translated = sdk.audio.translations.create(model="b", file=("take.wav", b"RIFF" + b"\0" * 10))
    assert translated.text == "14 bytes heard by b"
    seen = [r for r in gw.requests_seen() if r.get("path", "").startswith("/v1/audio")]
    assert [(r["model"], r["file_bytes"], r["filename"]) for r in seen] == [
        ("a", 2004, "take.wav"), ("b", 14, "take.wav")]  # the task became a's name, in the form

    with pytest.raises(openai.APIStatusError) as too_large:
        sdk.audio.transcriptions.create(model="a", file=("long.wav", b"\0" * (65 * 1024)))
    assert too_large.value.status_code == 413
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        def upload():  # chunked, no length given: the gateway counts as it reads, and stops at the limit
            head = b'--XX\r\nContent-Disposition: form-data; name="model"\r\n\r\na\r\n--XX\r\n' \
                   b'Content-Disposition: form-data; name="file"; filename="x.wav"\r\n\r\n'
            yield head
            for _ in range(160):  # 10 MiB in all
                yield b"\0" * 65536

        chunked = client.post("/v1/audio/transcriptions", content=upload(),
                              headers={"content-type": "multipart/form-data; boundary=XX"})
        as_json = client.post("/v1/audio/transcriptions", json={"model": "a"})
        as_form = client.post("/v1/chat/completions", data={"model": "a"}, files={"file": ("x.wav", b"x")})
        no_model = client.post("/v1/audio/transcriptions", files={"file": ("x.wav", b"x")})
        foreign = client.post("/v1/audio/transcriptions", data={"model": "a"}, files={"file": ("x.wav", b"x")},
                              headers={"origin": "https://evil.example"})
    assert chunked.status_code == 413 and chunked.headers["content-type"] == "application/json"
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["error"]["message"]
    assert as_form.status_code == 415
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"
    assert foreign.status_code == 403  # a page may post a form: its foreign Origin is refused
    assert len([r for r in gw.requests_seen() if r.get("path", "").startswith("/v1/audio")]) == 2


def test_pooling_routes_are_routed_by_model(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path))
    with httpx.Client(base_url=gw.url, timeout=sdk_timeout(gw)) as client:
        for path in ("/v1/score", "/score", "/v1/rerank", "/rerank", "/v2/rerank", "/pooling", "/classify"):
            answer = client.post(path, json={"model": "b", "text_1": "a", "text_2": "b"})
            assert answer.status_code == 200 and answer.json()["model"] == "b", (path, answer.text)
    assert [s.to_model for s in gw.gateway.pool.switches] == ["a", "b"]


def test_a_route_the_engines_vllm_lacks_is_a_404_naming_the_release_that_has_it(tmp_path: Path, gateways) -> None:
    gw = gateways(fake_gateway_config(tmp_path))
    gw.gateway.vllm_version = "0.9.2"
    with pytest.raises(anthropic.NotFoundError) as missing:
        anthropic_sdk(gw).messages.create(model="a", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    message = missing.value.body["error"]["message"]
    assert "vLLM 0.9.2" in message and "/v1/messages" in message and "came in vLLM 0.1" in message
    assert not [r for r in gw.requests_seen() if r.get("path") == "/v1/messages"]


def test_models_lists_what_each_model_serves(tmp_path: Path, gateways) -> None:
    def model_folder(name: str, architecture: str) -> str:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}))
        return str(folder)

    gw = gateways(fake_gateway_config(tmp_path, extra_models={
        "e": {"source": model_folder("embedder", "BertModel"), "profile": "p"},
        "w": {"source": model_folder("whisper", "WhisperForConditionalGeneration"), "profile": "p"},
        "r": {"source": "org/model-r", "profile": "p", "extra_args": {"runner": "pooling"}}}))
    listed = {m["id"]: m for m in openai_sdk(gw).models.list().model_dump()["data"]}
    assert {name: listed[name]["serves"] for name in ("a", "e", "w", "r")} == {
        "a": ["generate"], "e": ["pooling"], "w": ["transcription"], "r": ["pooling"]}

"""Every API a studio's clients speak, on real vLLM (CPU build) through the shared gateway,
with the clients' own SDKs, each first naming a model that is not loaded, so that each goes
through a load: OpenAI's Responses API (streamed and not; a stored response found on its
engine after another model was loaded beside it, and told gone once that engine stopped),
Anthropic's Messages API (streamed and not, count_tokens), a pooling model (tiny-a's
files run as one) for embeddings and score, and Ollama's API with its own client (a load
and an unload by keep_alive 0, through tiny-p's test). Loads: tiny-c, the shared model
tiny-c evicted, the other one put back; tiny-p, and what it evicted, loaded again by an
Ollama chat once tiny-p unloaded itself."""

from __future__ import annotations

import json

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.support.gateways import RunningGateway, start_bound_s
from tests.support.helpers import run_cli
from tests.support.shared_engines import MODELS, OTHER, POOLING, resident
from tests.support.waiting import wait_until

pytestmark = pytest.mark.engine
ASK = [{"role": "user", "content": "hello"}]


def timeout_s(gw: RunningGateway) -> float:
    return start_bound_s(gw.gateway.loaded) + 300


def loads(gw: RunningGateway) -> list[tuple[str | None, list[str]]]:
    return [(s.to_model, s.evicted) for s in gw.gateway.pool.switches if s.outcome == "ok"]


def put_back(model: str) -> dict:
    switched = run_cli("switch", model, "--json")
    assert switched.exit_code == 0, switched.stdout + switched.stderr
    return json.loads(switched.stdout)


def test_responses_and_messages_each_through_a_load(shared_gateway: RunningGateway) -> None:
    gw = shared_gateway
    sdk = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=timeout_s(gw))
    claude = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0, timeout=timeout_s(gw))
    before = len(loads(gw))

    # 1. The Responses API, naming tiny-c: its load evicts one of the shared two.
    events = list(sdk.responses.create(model=OTHER, input="hello", max_output_tokens=6, stream=True,
                                       extra_body={"ignore_eos": True}))
    ends = ("response.completed", "response.incomplete")
    assert events[0].type == "response.created" and events[-1].type in ends, [e.type for e in events]
    assert sum(1 for e in events if e.type == "response.output_text.delta") >= 1
    made = sdk.responses.create(model=OTHER, input="hello", max_output_tokens=6, extra_body={"ignore_eos": True})
    assert made.usage.output_tokens == 6 and made.model == OTHER
    assert made.status == "incomplete" and made.incomplete_details.reason == "max_output_tokens"
    (loaded, evicted), = loads(gw)[before:]
    assert loaded == OTHER and len(evicted) == 1 and evicted[0] in MODELS
    other = next(m for m in MODELS if m not in evicted)

    # 2. The Messages API, naming the model tiny-c evicted: its load evicts `other`, the
    # least recently used, and tiny-c stays beside it.
    with claude.messages.stream(model=evicted[0], max_tokens=6, messages=ASK) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed and final.usage.output_tokens >= 1 and final.role == "assistant"
    assert loads(gw)[before + 1:] == [(evicted[0], [other])]

    # 3. The stored response, on tiny-c's engine, found after evicted[0] was loaded beside it.
    assert sdk.responses.retrieve(made.id).output_text == made.output_text
    message = claude.messages.create(model=evicted[0], max_tokens=4, messages=ASK)
    assert message.content[0].type == "text" and message.usage.input_tokens >= 1
    assert claude.messages.count_tokens(model=evicted[0], messages=ASK).input_tokens >= 1
    assert resident(gw) == {OTHER, evicted[0]}

    # 4. Put back as found: `other` evicts tiny-c, whose stored response is gone with its engine.
    report = put_back(other)
    assert report["evicted"] == [OTHER] and resident(gw) == set(MODELS)
    with pytest.raises(openai.NotFoundError) as gone:
        sdk.responses.retrieve(made.id)
    assert gone.value.code == "response_gone" and OTHER in gone.value.message


def test_a_pooling_model_for_embeddings_and_score_through_a_load(shared_gateway: RunningGateway) -> None:
    gw = shared_gateway
    sdk = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=timeout_s(gw))
    before = len(loads(gw))
    embedded = sdk.embeddings.create(model=POOLING, input=["a lamp", "a lantern"])
    assert len(embedded.data) == 2 and len(embedded.data[0].embedding) >= 8
    (loaded, evicted), = loads(gw)[before:]
    assert loaded == POOLING and len(evicted) == 1
    scored = httpx.post(f"{gw.url}/v1/score", json={"model": POOLING, "text_1": "a lamp", "text_2": ["a lantern"]},
                        timeout=timeout_s(gw))
    assert scored.status_code == 200, scored.text
    assert len(scored.json()["data"]) == 1 and -1.0 <= scored.json()["data"][0]["score"] <= 1.0
    listed = {m.id: m.model_dump() for m in sdk.models.list().data}
    assert listed[POOLING]["serves"] == ["pooling"] and listed[OTHER]["serves"] == ["generate"]
    chat_on_pooling = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": POOLING, "messages": ASK},
                                 timeout=timeout_s(gw))
    assert chat_on_pooling.status_code == 404 and chat_on_pooling.json()["error"]["code"] == "route_not_served"

    # Ollama's client: an embedding that unloads tiny-p once answered (keep_alive 0), then a
    # chat naming the model tiny-p evicted, which loads it into the room left (load_duration).
    ask = ollama.Client(host=gw.url, timeout=timeout_s(gw))
    vectors = ask.embed(model=POOLING, input=["a lamp", "a lantern"], keep_alive=0)
    assert len(vectors.embeddings) == 2 and len(vectors.embeddings[0]) == len(embedded.data[0].embedding)
    assert vectors.load_duration == 0 and vectors.prompt_eval_count >= 2
    wait_until(lambda: POOLING not in gw.gateway.pool.models, timeout_s(gw), "tiny-p's unload after keep_alive 0")
    assert POOLING not in [m.model for m in ask.ps().models]
    answer = ask.chat(model=evicted[0], messages=ASK, options={"num_predict": 3})
    switch = gw.gateway.pool.switches[-1]
    assert (switch.to_model, switch.evicted, switch.outcome) == (evicted[0], [], "ok")
    assert answer.done and answer.message.role == "assistant" and 1 <= answer.eval_count <= 3
    assert answer.load_duration >= switch.load_s * 1e9 and answer.total_duration > answer.load_duration
    assert resident(gw) == set(MODELS)


def test_ollamas_client_on_the_shared_engines(shared_gateway: RunningGateway) -> None:
    """Ollama's own client, unchanged, against the gateway: its listing, the resident
    engines, a model's details, chat and generate streamed and not (no load: tiny-p's test
    shows a load and an unload)."""
    gw = shared_gateway
    ask = ollama.Client(host=gw.url, timeout=timeout_s(gw))
    assert [m.model for m in ask.list().models] == [*MODELS, OTHER, POOLING]
    running = {m.model: m for m in ask.ps().models}
    assert set(running) == set(MODELS) and all(m.size_vram > 0 and m.context_length > 0 for m in running.values())
    shown = ask.show(MODELS[0])
    assert shown.capabilities == ["completion"] and "{%" in shown.template  # vLLM's Jinja chat template
    assert shown.modelinfo[f"{shown.details.family}.context_length"] == running[MODELS[0]].context_length
    assert "embedding" in ask.show(POOLING).capabilities

    answer = ask.chat(model=MODELS[0], messages=ASK, options={"num_predict": 4, "temperature": 0})
    assert answer.done and 1 <= answer.eval_count <= 4 and answer.load_duration == 0  # greedy may end at once
    assert answer.prompt_eval_count >= 1 and answer.prompt_eval_duration > 0
    chunks = list(ask.chat(model=MODELS[1], messages=ASK, options={"num_predict": 4}, stream=True))
    assert chunks[-1].done and not any(c.done for c in chunks[:-1]) and chunks[-1].eval_count >= 1
    again = ask.chat(model=MODELS[0], messages=ASK, options={"num_predict": 4, "temperature": 0})
    assert again.message.content == answer.message.content  # temperature 0 reached vLLM's sampler
    generated = ask.generate(model=MODELS[0], prompt="Once upon a time", options={"num_predict": 3})
    assert generated.done and generated.eval_count >= 1 and isinstance(generated.response, str)
    pieces = list(ask.generate(model=MODELS[1], prompt="Once", raw=True, options={"num_predict": 3}, stream=True))
    assert pieces[-1].done and pieces[-1].done_reason in ("stop", "length")
    assert resident(gw) == set(MODELS)

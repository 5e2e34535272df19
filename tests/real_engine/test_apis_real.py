"""Every API a studio's clients speak, on real vLLM (CPU build) through the shared gateway,
with the clients' own SDKs, each first naming a model that is not loaded, so that each goes
through a load: OpenAI's Responses API (streamed and not; a stored response found on its
engine after another model was loaded beside it, and told gone once that engine stopped),
Anthropic's Messages API (streamed and not, count_tokens), and a pooling model (tiny-a's
files run as one) for embeddings and score. Loads: tiny-c, the shared model tiny-c evicted,
the other one put back; tiny-p, and what it evicted put back."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.support.gateways import RunningGateway, start_bound_s
from tests.support.helpers import run_cli
from tests.support.shared_engines import MODELS, OTHER, POOLING, resident

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
    other = next(m for m in MODELS if m not in evicted)
    sdk.chat.completions.create(model=other, messages=ASK, max_tokens=1)  # tiny-p is now the least recently used
    report = put_back(evicted[0])
    assert report["evicted"] == [POOLING] and resident(gw) == set(MODELS)

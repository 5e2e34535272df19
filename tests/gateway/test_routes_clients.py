"""The routes the gateway relays, held to vLLM's own (engine/vllm_routes.json, read from every
release's code): every POST route with a body, in every release read, is relayed by model
with the body kind it takes, or named as the engine's own control that no client reaches;
and each error a route answers with is in its API's shape."""

from __future__ import annotations

import json

from animllm_cli.engine import vllm_routes
from animllm_cli.gateway.dialects import ANTHROPIC, OPENAI, dialect_of
from animllm_cli.gateway.guard import error
from animllm_cli.gateway.routes_clients import FORM_ROUTES, JSON_ROUTES, NOT_MODEL_ROUTES
from animllm_cli.gateway.stored_responses import answer_id


def every_release_route() -> dict[str, set[str]]:
    """path -> the body kinds its POST handler takes, over every release read."""
    found: dict[str, set[str]] = {}
    for release in vllm_routes.table_releases():
        for path, spec in (vllm_routes.routes_of(release) or {}).items():
            if "POST" in spec.methods and spec.body != "none" and "{" not in path:
                found.setdefault(path, set()).add(spec.body)
    return found


def test_every_post_route_of_every_release_is_relayed_by_model_or_kept_from_clients() -> None:
    routes = every_release_route()
    unclassified = set(routes) - set(JSON_ROUTES) - set(FORM_ROUTES) - NOT_MODEL_ROUTES
    assert not unclassified, f"vLLM routes neither relayed nor kept from clients: {sorted(unclassified)}"
    assert all(routes[path] == {"json"} for path in JSON_ROUTES if path in routes), \
        {path: routes[path] for path in JSON_ROUTES if path in routes and routes[path] != {"json"}}
    assert all(routes[path] == {"multipart"} for path in FORM_ROUTES)
    assert not set(JSON_ROUTES) & NOT_MODEL_ROUTES and len(set(JSON_ROUTES)) == len(JSON_ROUTES)


def test_anthropic_routes_answer_in_anthropic_shape_and_the_rest_in_openai_shape() -> None:
    assert dialect_of("/v1/messages") is ANTHROPIC and dialect_of("/v1/messages/count_tokens") is ANTHROPIC
    assert dialect_of("/v1/messages-x") is OPENAI and dialect_of("/v1/responses") is OPENAI
    shaped = ANTHROPIC.reshape(error(503, "busy: GPU 0 is full", "server_busy", retry_after=5))
    assert json.loads(shaped.body) == {"type": "error", "error": {"type": "overloaded_error",
                                                                  "message": "busy: GPU 0 is full"}}
    assert shaped.status_code == 503 and shaped.headers["retry-after"] == "5"
    for status, kind in ((400, "invalid_request_error"), (401, "authentication_error"), (404, "not_found_error"),
                         (413, "request_too_large"), (504, "timeout_error"), (502, "api_error")):
        assert json.loads(ANTHROPIC.reshape(error(status, "m")).body)["error"]["type"] == kind
    plain = error(404, "no such model", code="model_not_found")
    assert OPENAI.reshape(plain) is plain
    assert ANTHROPIC.stream_error("cut short", "engine_error").startswith(b"\n\nevent: error\ndata: ")
    assert OPENAI.stream_error("cut short", "timeout") == \
        b'\n\ndata: {"error": {"message": "cut short", "type": "timeout"}}\n\n'


def test_a_response_id_is_read_from_a_body_or_from_a_streams_first_event() -> None:
    assert answer_id(b'{"id": "resp_1", "object": "response", "output": []}') == "resp_1"
    assert answer_id(b'{"id": "chatcmpl-1", "object": "chat.completion"}') is None
    created = b'event: response.created\ndata: {"type": "response.created", "response": {"id": "resp_2"}}\n\n'
    assert answer_id(created) == "resp_2"
    assert answer_id(b": a comment\n\n") is None

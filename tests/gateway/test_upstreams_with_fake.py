"""Models served elsewhere (`upstream:`), through the real gateway, against fake remote
upstream_servers that record what reached them: where keys go, redirects, TLS, spreading and
failover (only while nothing reached the client), health in and out of rotation."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.fakes.upstream import FakeUpstream
from tests.support.helpers import REPO_ROOT, free_port, write
from tests.support.waiting import wait_until

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

CHECK_BOUND_S = 10  # a health check or a dispatch to a fake that answers in milliseconds


def upstream_config(tmp_path: Path, remotes: dict[str, dict[str, Any]], *, local: bool = True,
                    limits: dict | None = None) -> Path:
    """A gateway config: the fake local engine `a` (when `local`) and these remote models.
    The engine's port is a free one, not engine.port's 8100: two xdist workers' gateways
    that both found 8100 free started their engines on it, and one failed (a 503 for `a`)."""
    models: dict[str, Any] = {name: {"upstream": {"health_interval_s": 0.2, **spec.pop("upstream")}, **spec}
                              for name, spec in remotes.items()}
    if local:
        models["a"] = {"source": "org/model-a", "profile": "p", "tasks": ["chat"]}
    return write(tmp_path / "gateway.yaml", f"""
        inherit_defaults: false
        engine: {{module: tests.fakes.fake_vllm, port: {free_port()}, stall_timeout_s: 5, start_timeout_s: 30,
                 stop_grace_s: 2}}
        env: {{PYTHONPATH: "{REPO_ROOT}", FAKE_VLLM_LOG: "{tmp_path / 'requests.jsonl'}"}}
        limits: {json.dumps({"request_timeout_s": 30, **(limits or {})})}
        profiles: {{p: {{max_model_len: 1024, concurrency: 4}}}}
        models: {json.dumps(models)}
    """)


def serve(upstream_servers: list[FakeUpstream], name: str, **kwargs: Any) -> FakeUpstream:
    server = FakeUpstream(name, kwargs.pop("served", ["there"]), **kwargs).start()
    upstream_servers.append(server)
    return server


def sse_data(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def remote_status(gw: Any, model: str, **kwargs: Any) -> dict:
    with gw.client(**kwargs) as client:
        status = client.get("/admin/status").json()
    return next(r for r in status["remotes"] if r["model"] == model)


def test_local_and_remote_models_through_one_gateway(tmp_path, upstream_servers, gateways, monkeypatch) -> None:
    monkeypatch.setenv("R_KEY", "remote-secret")
    remote = serve(upstream_servers, "one", key="remote-secret")
    gw = gateways(upstream_config(tmp_path, {"r": {"upstream": {"urls": [f"{remote.url}/v1"], "model": "there",
                                                               "api_key_env": "R_KEY"}, "aliases": ["rr"]}}),
                 key="gateway-secret")
    auth = {"authorization": "Bearer gateway-secret"}
    with gw.client(headers=auth) as client:
        plain = client.post("/v1/chat/completions", json={"model": "rr", **CHAT})
        streamed = client.post("/v1/chat/completions", json={"model": "r", "stream": True, **CHAT})
        local = client.post("/v1/chat/completions", json={"model": "a", **CHAT})
        listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert plain.status_code == 200 and plain.json()["upstream"] == "one"
    assert sse_data(streamed.text)[-1] == "[DONE]" and len(sse_data(streamed.text)) == 4
    assert local.status_code == 200 and "upstream" not in local.json(), local.text
    # The request's model becomes the name there; the upstream's own key went, the gateway's never.
    chats = [s for s in remote.seen if s["path"] == "/v1/chat/completions"]
    assert [c["body"]["model"] for c in chats] == ["there", "there"]
    assert all(c["headers"]["Authorization"] == "Bearer remote-secret" for c in chats)
    assert "gateway-secret" not in json.dumps(remote.seen)
    assert listed["r"]["remote"] is True and listed["r"]["loaded"] is True and remote.url not in json.dumps(listed)
    assert listed["a"]["remote"] is False
    # No switch for the remote model: the only load is the first one, of `a`.
    assert [s.to_model for s in gw.gateway.pool.switches] == ["a"]
    assert "remote-secret" not in json.dumps(remote_status(gw, "r", headers=auth))


def test_each_key_goes_to_its_own_upstream_only(tmp_path, upstream_servers, gateways, monkeypatch) -> None:
    monkeypatch.setenv("ONE_KEY", "key-of-one")
    monkeypatch.setenv("TWO_KEY", "key-of-two")
    one, two = serve(upstream_servers, "one", key="key-of-one"), serve(upstream_servers, "two", key="key-of-two")
    gw = gateways(upstream_config(tmp_path, {
        "r1": {"upstream": {"urls": [one.url], "model": "there", "api_key_env": "ONE_KEY"}},
        "r2": {"upstream": {"urls": [two.url], "model": "there", "api_key_env": "TWO_KEY"}}}, local=False),
        model="r1")
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json={"model": "r1", **CHAT}).json()["upstream"] == "one"
        assert client.post("/v1/chat/completions", json={"model": "r2", **CHAT}).json()["upstream"] == "two"
    assert "key-of-two" not in json.dumps(one.seen) and "key-of-one" not in json.dumps(two.seen)


def test_a_redirect_is_never_followed_so_no_key_leaves_for_another_host(tmp_path, upstream_servers, gateways,
                                                                          monkeypatch) -> None:
    monkeypatch.setenv("R_KEY", "remote-secret")
    elsewhere = serve(upstream_servers, "elsewhere")
    moved = serve(upstream_servers, "moved", key="remote-secret", mode="redirect", redirect_to=elsewhere.url)
    gw = gateways(upstream_config(tmp_path, {"r": {"upstream": {"urls": [moved.url], "model": "there",
                                                               "api_key_env": "R_KEY"}}}, local=False), model="r")
    with gw.client() as client:
        answer = client.post("/v1/chat/completions", json={"model": "r", **CHAT})
    assert answer.status_code == 503
    assert "HTTP 307" in answer.json()["error"]["message"] and "never follows a redirect" in answer.json()["error"]["message"]
    assert elsewhere.seen == []  # neither the health check nor the request went there
    wait_until(lambda: remote_status(gw, "r")["upstreams"][0]["healthy"] is False, CHECK_BOUND_S,
               "the redirect to take it out")
    assert "redirect" in remote_status(gw, "r")["upstreams"][0]["problem"]


@pytest.fixture(scope="module")
def test_ca() -> trustme.CA:
    return trustme.CA()


def tls_server(upstream_servers: list[FakeUpstream], ca: trustme.CA) -> FakeUpstream:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    return serve(upstream_servers, "tls", tls=context)


@pytest.mark.parametrize("setting, works", [({"ca_bundle": "ca.pem"}, True), ({}, False),
                                            ({"verify_tls": False}, True)])
def test_tls_is_verified_against_the_ca_bundle_unless_turned_off(tmp_path, upstream_servers, gateways, test_ca, setting,
                                                                 works) -> None:
    test_ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = tls_server(upstream_servers, test_ca)
    gw = gateways(upstream_config(tmp_path, {"r": {"upstream": {"urls": [server.url], "model": "there", **setting}}},
                 local=False), model="r")
    with gw.client() as client:
        answer = client.post("/v1/chat/completions", json={"model": "r", **CHAT})
    if works:
        assert answer.status_code == 200 and answer.json()["upstream"] == "tls"
    else:
        assert answer.status_code == 503 and "certificate" in answer.json()["error"]["message"].lower()
        assert not any(s["path"] == "/v1/chat/completions" for s in server.seen)


@pytest.mark.parametrize("failure", ["503", "drop"])
def test_a_request_fails_over_before_anything_reached_the_client(tmp_path, upstream_servers, gateways, failure) -> None:
    broken, good = serve(upstream_servers, "broken", mode=failure, health_mode="ok"), serve(upstream_servers, "good")
    gw = gateways(upstream_config(tmp_path, {"r": {"upstream": {"urls": [broken.url, good.url], "model": "there",
                                                               "health_interval_s": 60}}}, local=False), model="r")
    with gw.client() as client:
        plain = client.post("/v1/chat/completions", json={"model": "r", **CHAT})
        streamed = client.post("/v1/chat/completions", json={"model": "r", "stream": True, **CHAT})
        metrics = client.get("/metrics").text
    assert plain.status_code == 200 and plain.json()["upstream"] == "good"
    assert sse_data(streamed.text)[-1] == "[DONE]"
    assert 'animllm_upstream_failovers_total{model="r"}' in metrics
    status = remote_status(gw, "r")["upstreams"]
    assert status[0]["healthy"] is False and status[1]["healthy"] is True


def test_no_failover_once_the_stream_has_begun(tmp_path, upstream_servers, gateways) -> None:
    dying, good = serve(upstream_servers, "dying", mode="die-mid-stream"), serve(upstream_servers, "good")
    gw = gateways(upstream_config(tmp_path, {"r": {"upstream": {"urls": [dying.url, good.url], "model": "there",
                                                               "health_interval_s": 60}}}, local=False), model="r")
    with gw.client() as client:
        streamed = client.post("/v1/chat/completions", json={"model": "r", "stream": True, **CHAT})
    events = sse_data(streamed.text)
    assert json.loads(events[0]).get("upstream") == "dying", streamed.text
    assert "[DONE]" not in events and "stopped mid-answer" in json.loads(events[-1])["error"]["message"]
    assert not any(s["path"] == "/v1/chat/completions" for s in good.seen)  # never sent twice
    assert remote_status(gw, "r")["upstreams"][0]["healthy"] is False


def test_requests_go_to_the_url_with_the_fewest_outstanding(tmp_path, upstream_servers, gateways) -> None:
    slow, fast = serve(upstream_servers, "slow", chunk_delay_s=0.5), serve(upstream_servers, "fast")
    gw = gateways(upstream_config(tmp_path, {"r": {"upstream": {"urls": [slow.url, fast.url], "model": "there"}}},
                                 local=False), model="r")

    def one() -> str:
        with gw.client() as client:
            answer = client.post("/v1/chat/completions", json={"model": "r", "stream": True, **CHAT})
        return json.loads(sse_data(answer.text)[0])["upstream"]

    upstreams = gw.gateway.upstreams.get("r").upstreams
    with ThreadPoolExecutor(8) as pool:
        answers = []
        for index in range(8):  # arriving one after another while the slow server still answers
            answers.append(pool.submit(one))
            wait_until(lambda: sum(u.sent for u in upstreams) > index, CHECK_BOUND_S, f"request {index} to be sent")
        served = [answer.result() for answer in answers]
    # Round robin would give each four; the slow one holds its first request ~1.5 s meanwhile.
    assert served.count("fast") >= 6 and served.count("slow") >= 1, served


def test_an_unhealthy_url_leaves_rotation_and_comes_back(tmp_path, upstream_servers, gateways) -> None:
    flaky, steady = serve(upstream_servers, "flaky", mode="503"), serve(upstream_servers, "steady")
    gw = gateways(upstream_config(tmp_path, {"r": {"upstream": {"urls": [flaky.url, steady.url], "model": "there"}}},
                                 local=False), model="r")
    wait_until(lambda: remote_status(gw, "r")["upstreams"][0]["healthy"] is False, CHECK_BOUND_S,
               "the health check to fail")
    with gw.client() as client:
        for _ in range(4):
            assert client.post("/v1/chat/completions", json={"model": "r", **CHAT}).json()["upstream"] == "steady"
    assert "/v1/chat/completions" not in flaky.paths_seen()  # out of rotation: not even tried
    flaky.mode = "ok"
    wait_until(lambda: remote_status(gw, "r")["upstreams"][0]["healthy"] is True, CHECK_BOUND_S,
               "the health check to pass")
    with gw.client() as client:
        served = {client.post("/v1/chat/completions", json={"model": "r", **CHAT}).json()["upstream"]
                  for _ in range(4)}
    assert served == {"flaky", "steady"}


def test_every_url_down_is_one_clear_error(tmp_path, upstream_servers, gateways) -> None:
    one, two = serve(upstream_servers, "one", mode="503"), serve(upstream_servers, "two", mode="drop")
    gw = gateways(upstream_config(tmp_path, {"r": {"upstream": {"urls": [one.url, two.url], "model": "there"}}},
                                 local=False), model="r")
    with gw.client() as client:
        answer = client.post("/v1/chat/completions", json={"model": "r", "stream": True, **CHAT})
    message = answer.json()["error"]["message"]
    assert answer.status_code == 503 and one.url in message and two.url in message and "HTTP 503" in message


def test_a_missing_key_variable_is_named(tmp_path, upstream_servers, gateways, monkeypatch) -> None:
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    remote = serve(upstream_servers, "one", key="k")
    gw = gateways(upstream_config(tmp_path, {"r": {"upstream": {"urls": [remote.url], "model": "there",
                                                               "api_key_env": "NOT_SET_KEY"}}}))
    with gw.client() as client:
        answer = client.post("/v1/chat/completions", json={"model": "r", **CHAT})
    assert answer.status_code == 503 and "NOT_SET_KEY" in answer.json()["error"]["message"]
    assert remote.seen == []
    assert "NOT_SET_KEY" in remote_status(gw, "r")["key_problem"]


def test_the_remote_concurrency_limit_queues_the_rest(tmp_path, upstream_servers, gateways) -> None:
    slow = serve(upstream_servers, "slow", chunk_delay_s=0.3)
    gw = gateways(upstream_config(tmp_path, {"r": {"upstream": {"urls": [slow.url], "model": "there"},
                                                  "concurrency": 1}}, local=False), model="r")
    with gw.client() as client, ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/chat/completions",
                                                      json={"model": "r", "stream": True, **CHAT}), range(3)))
    assert all(sse_data(a.text)[-1] == "[DONE]" for a in answers)
    assert slow.most_open == 1 and len([s for s in slow.seen if s["path"] == "/v1/chat/completions"]) == 3


def test_a_key_the_upstream_refuses_is_a_502_naming_the_variable(tmp_path, upstream_servers, gateways, monkeypatch) -> None:
    monkeypatch.setenv("R_KEY", "stale-key")
    remote = serve(upstream_servers, "one", key="current-key")
    gw = gateways(upstream_config(tmp_path, {"r": {"upstream": {"urls": [remote.url], "model": "there",
                                                               "api_key_env": "R_KEY"}}}), key="gateway-key")
    with gw.client(headers={"authorization": "Bearer gateway-key"}) as client:
        answer = client.post("/v1/chat/completions", json={"model": "r", **CHAT})
    assert answer.status_code == 502  # not a 401: the client's own key was right
    assert "refused the key (HTTP 401)" in answer.json()["error"]["message"] and "R_KEY" in answer.json()["error"]["message"]
    assert "stale-key" not in answer.text


def test_a_504_is_passed_on_without_failover(tmp_path, upstream_servers, gateways) -> None:
    proxy, other = serve(upstream_servers, "proxy", mode="504", health_mode="ok"), serve(upstream_servers, "other")
    gw = gateways(upstream_config(tmp_path, {"r": {"upstream": {"urls": [proxy.url, other.url], "model": "there",
                                                               "health_interval_s": 60}}}, local=False), model="r")
    with gw.client() as client:
        answer = client.post("/v1/chat/completions", json={"model": "r", **CHAT})
    # A proxy's timeout says nothing about the server: the generation is not run twice.
    assert answer.status_code == 504 and answer.headers["retry-after"] == "7"
    assert not any(s["path"] == "/v1/chat/completions" for s in other.seen)
    assert remote_status(gw, "r")["upstreams"][0]["healthy"] is True


def test_a_server_behind_a_path_prefix(tmp_path, upstream_servers, gateways) -> None:
    proxied = serve(upstream_servers, "proxied", prefix="/llm/openai")
    gw = gateways(upstream_config(tmp_path, {"r": {"upstream": {"urls": [f"{proxied.url}/v1/"], "model": "there"}}},
                                 local=False), model="r")
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json={"model": "r", **CHAT}).json()["upstream"] == "proxied"
    assert "/llm/openai/v1/chat/completions" in proxied.paths_seen()


def test_the_upstreams_idle_bound_cuts_a_stalled_stream(tmp_path, upstream_servers, gateways) -> None:
    stalling = serve(upstream_servers, "stalling", chunk_delay_s=2)
    gw = gateways(upstream_config(tmp_path, {"r": {"upstream": {"urls": [stalling.url], "model": "there",
                                                               "idle_timeout_s": 0.3}}}, local=False), model="r")
    with gw.client() as client:
        events = sse_data(client.post("/v1/chat/completions", json={"model": "r", "stream": True, **CHAT}).text)
    assert "[DONE]" not in events
    assert f"no output from upstream {stalling.url} of 'r' within idle_timeout_s (0.3s)" in \
        json.loads(events[-1])["error"]["message"]


def test_a_remote_model_is_served_with_switch_on_demand_off_and_preloading_it_loads_nothing(
        tmp_path, upstream_servers, gateways) -> None:
    remote = serve(upstream_servers, "one")
    config = upstream_config(tmp_path, {"r": {"upstream": {"urls": [remote.url], "model": "there"}}})
    config.write_text(config.read_text() + "server: {switch_on_demand: false}\n")
    gw = gateways(config, preload=["r"])  # as `serve a --preload r`
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json={"model": "r", **CHAT}).json()["upstream"] == "one"
    wait_until(lambda: any(kind == "note" for kind, _ in gw.events), CHECK_BOUND_S, "the preload note")
    assert ("note", "preload: r is served elsewhere: nothing to load") in gw.events

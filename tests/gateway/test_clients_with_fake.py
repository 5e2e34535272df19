"""Clients, each with its own key (`clients:`), through the real gateway to fake engines:
a model a client may not use refused in each API's shape, the rate limits with Retry-After,
the priority ceiling, a revoked key refused at once, the admin routes for admins only, the
usage counted exactly (the stream that did not ask for its usage chunk does not get it), and
nothing of a key in any log, file or metric. Fair shares: tests/gateway/test_fair_shares.py."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from animllm_cli.access.keys import KeyStore
from animllm_cli.access.usage import UsageLog
from animllm_cli.gateway import clients as clients_module
from animllm_cli.gateway.clients import Clients
from animllm_cli.config import load_config
from tests.cli.test_json_schemas import SCHEMAS
from tests.support.gateways import fake_gateway_config, start_bound_s
from tests.support.helpers import run_cli
from tests.support.waiting import wait_until

KEYS = {"BATCH_KEY": "batch-" + "b" * 40, "ARTIST_KEY": "artist-" + "a" * 40}
CLIENTS = {"batch": {"api_key_env": "BATCH_KEY", "models": ["v", "a"], "priority": -5, "priority_max": 0,
                     "requests_per_minute": 3},
           "artist": {"api_key_env": "ARTIST_KEY", "models": ["chat"], "priority": 10, "tokens_per_minute": 30},
           "ops": {"admin": True}}
HI = [{"role": "user", "content": "hi"}]
SERVER_KEY = "server-" + "k" * 40


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)


def config(tmp_path: Path, **options) -> Path:
    return fake_gateway_config(tmp_path, sections={"clients": CLIENTS}, **options)


def sdk(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=start_bound_s(gw.gateway.loaded))


def test_a_client_may_use_only_its_models_and_is_told_so_in_each_apis_shape(tmp_path: Path, gateways, keyed) -> None:
    gw = gateways(config(tmp_path))
    artist = KEYS["ARTIST_KEY"]
    assert sdk(gw, artist).chat.completions.create(model="chat", messages=HI, max_tokens=2).model == "a"
    with pytest.raises(openai.PermissionDeniedError) as openai_refused:
        sdk(gw, artist).chat.completions.create(model="b", messages=HI, max_tokens=2)
    assert openai_refused.value.code == "model_not_allowed" and "client 'artist' may not use model 'b'" in \
        openai_refused.value.message
    claude = anthropic.Anthropic(base_url=gw.url, api_key=artist, max_retries=0, timeout=30)
    with pytest.raises(anthropic.PermissionDeniedError) as anthropic_refused:
        claude.messages.create(model="b", max_tokens=2, messages=HI)
    assert anthropic_refused.value.body["error"]["type"] == "permission_error"
    with pytest.raises(ollama.ResponseError) as ollama_refused:
        ollama.Client(host=gw.url, headers={"authorization": f"Bearer {artist}"}).chat(model="b", messages=HI)
    assert ollama_refused.value.status_code == 403 and "may not use model 'b'" in ollama_refused.value.error
    assert [m.id for m in sdk(gw, artist).models.list().data] == ["a"]  # only what it may use
    assert [m.model for m in ollama.Client(host=gw.url, headers={"authorization": f"Bearer {artist}"})
            .list().models] == ["a"]

    with httpx.Client(base_url=gw.url, timeout=30) as http:  # clients named: a key on loopback too
        assert http.post("/v1/chat/completions", json={"model": "a", "messages": HI}).status_code == 401
        assert http.get("/health").status_code == 200
        assert http.get("/admin/status", headers={"authorization": f"Bearer {artist}"}).status_code == 403


def test_rate_limits_answer_429_with_retry_after(tmp_path: Path, gateways, keyed) -> None:
    gw = gateways(config(tmp_path), preload=["v"])
    batch = sdk(gw, KEYS["BATCH_KEY"])
    for _ in range(3):  # its bucket holds a minute's worth: 3 requests
        batch.chat.completions.create(model="v", messages=HI, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as over:
        batch.chat.completions.create(model="v", messages=HI, max_tokens=1)
    assert over.value.code == "rate_limited" and 15 <= int(over.value.response.headers["retry-after"]) <= 21

    artist = sdk(gw, KEYS["ARTIST_KEY"])
    artist.chat.completions.create(model="a", messages=HI, max_tokens=30)  # 3 + 30 tokens: 3 over its 30 a minute
    with pytest.raises(openai.RateLimitError) as tokens:
        artist.chat.completions.create(model="a", messages=HI, max_tokens=1)
    assert 5 <= int(tokens.value.response.headers["retry-after"]) <= 7  # 3 tokens at 0.5 a second
    assert "30 tokens a minute" in tokens.value.message


def test_a_requests_priority_stays_under_its_clients_ceiling(tmp_path: Path, gateways, keyed) -> None:
    gw = gateways(config(tmp_path, concurrency=1))
    asked = [("ARTIST_KEY", None), ("ARTIST_KEY", "50"), ("BATCH_KEY", None), ("BATCH_KEY", "-8"),
             ("BATCH_KEY", "5")]
    with gw.one_running("a"):  # a's one slot held: each request waits, its priority to be read
        threads = [threading.Thread(target=httpx.post, args=(f"{gw.url}/v1/chat/completions",), daemon=True,
                                    kwargs={"json": {"model": "a", "messages": HI, "max_tokens": 1}, "timeout": 60,
                                            "headers": {"authorization": f"Bearer {KEYS[env]}",
                                                        **({"x-priority": p} if p else {})}})
                   for env, p in asked]
        for thread in threads:
            thread.start()
            wait_until(lambda: gw.gateway.scheduler.depth == threads.index(thread) + 1, 30, "the request to queue")
        seen = [(t.claimant.name, t.priority) for t in sorted(gw.gateway.scheduler.waiting, key=lambda t: t.seq)]
    assert seen == [("artist", 10.0), ("artist", 10.0), ("batch", -5.0), ("batch", -8.0), ("batch", 0.0)]
    for thread in threads:
        thread.join(timeout=30)


def test_a_revoked_key_is_refused_at_once_and_admins_reach_the_admin_routes(tmp_path: Path, gateways,
                                                                            keyed) -> None:
    gw = gateways(config(tmp_path, chunk_delay=0.2))
    made = run_cli("keys", "create", "ops", "--json", "--config", str(gw.gateway.loaded.files[-1]))
    assert made.exit_code == 0, made.stderr
    key, key_id = json.loads(made.stdout)["key"], json.loads(made.stdout)["id"]
    with httpx.Client(base_url=gw.url, timeout=30, headers={"authorization": f"Bearer {key}"}) as http:
        slow = threading.Thread(target=httpx.post, args=(f"{gw.url}/v1/chat/completions",), daemon=True, kwargs={
            "json": {"model": "a", "messages": HI, "max_tokens": 20}, "timeout": 60,
            "headers": {"authorization": f"Bearer {KEYS['ARTIST_KEY']}"}})
        slow.start()  # the artist's request runs while the status is read (the engine takes 4 s)
        wait_until(lambda: gw.gateway.scheduler.client_running["artist"] == 1, 30, "the artist's request to run")
        status = run_cli("status", "--json", env={"ANIMLLM_API_KEY": key, "ANIMLLM_CONFIG": str(gw.gateway.loaded.files[-1])})
        assert status.exit_code == 0, status.stderr
        documented = SCHEMAS["status"]["clients"]["<client>"]  # docs/json.md's example
        assert json.loads(status.stdout)["clients"] == {"artist": {"waiting": 0, "running": 1}}
        assert set(json.loads(status.stdout)["clients"]["artist"]) == set(documented)
        assert "artist: 1 running, 0 waiting" in run_cli("status", env={"ANIMLLM_API_KEY": key}).stdout
        listed = run_cli("keys", "list", "--json", "--config", str(gw.gateway.loaded.files[-1]))
        assert key not in listed.stdout and json.loads(listed.stdout)["clients"][2]["keys"][0]["id"] == key_id
        assert run_cli("keys", "revoke", key_id).exit_code == 0
        refused = http.get("/admin/status")
    assert refused.status_code == 401  # no restart: the gateway read the keys file again


def test_usage_is_counted_exactly_and_nothing_of_a_key_is_kept(tmp_path: Path, gateways, keyed,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gw = gateways(config(tmp_path), key=SERVER_KEY)  # the server's key: an admin, for /metrics
    artist = sdk(gw, KEYS["ARTIST_KEY"])
    artist.chat.completions.create(model="a", messages=HI, max_tokens=4)                   # 3 in, 4 out
    chunks = list(artist.chat.completions.create(model="a", messages=HI, max_tokens=5, stream=True))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices  # it asked for no usage chunk: none came
    asked = list(artist.chat.completions.create(model="a", messages=HI, max_tokens=2, stream=True,
                                                stream_options={"include_usage": True}))
    assert asked[-1].usage.completion_tokens == 2  # it asked: it got it
    sdk(gw, KEYS["BATCH_KEY"]).completions.create(model="a", prompt="x", max_tokens=3)
    with pytest.raises(openai.PermissionDeniedError):
        sdk(gw, KEYS["BATCH_KEY"]).chat.completions.create(model="b", messages=HI)
    metrics = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {SERVER_KEY}"}).text
    assert 'animllm_client_tokens_total{client="artist",direction="out",model="a"} 11.0' in metrics
    assert 'animllm_client_tokens_total{client="artist",direction="in",model="a"} 9.0' in metrics
    assert 'animllm_client_requests_total{client="batch",model="b",outcome="forbidden"} 1.0' in metrics
    gw.stop()  # the record survives the gateway: `usage` reads the file
    report = json.loads(run_cli("usage", "--json").stdout)["usage"]
    rows = {(r["client"], r["model"]): r for r in report}
    assert (rows["artist", "a"]["requests"], rows["artist", "a"]["tokens_in"], rows["artist", "a"]["tokens_out"]) \
        == (3, 9, 11)
    assert (rows["batch", "a"]["tokens_out"], rows["batch", "b"]["errors"]) == (3, 1)
    assert "artist" in run_cli("usage", "--since", "1h").stdout

    kept = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    kept.append("\n".join(r.getMessage() for r in caplog.records).encode())
    kept.append(metrics.encode())
    for key in (*KEYS.values(), SERVER_KEY):
        assert not any(key.encode() in blob for blob in kept), "a key was written down"


def test_every_known_key_is_compared_in_constant_time_whichever_matches(tmp_path: Path, keyed,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    clients = Clients(load_config(config(tmp_path)), "server-" + "s" * 40, store=KeyStore(tmp_path / "keys.jsonl"))
    clients.store.create("ops")
    calls: list[int] = []
    real = clients_module.hmac.compare_digest
    monkeypatch.setattr(clients_module.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    counts = []
    for presented in ("server-" + "s" * 40, KEYS["ARTIST_KEY"], "wrong", KEYS["BATCH_KEY"]):
        calls.clear()
        clients.identify(presented)
        counts.append(len(calls))
    assert counts == [4, 4, 4, 4]  # the server's, two from variables, one made: each compared every time
    assert clients.identify(KEYS["ARTIST_KEY"]).name == "artist" and clients.identify("wrong") is None


def test_usage_record_is_private(tmp_path: Path) -> None:
    from animllm_cli.access.usage import UsageRow

    log = UsageLog(tmp_path / "clients" / "usage.sqlite3")
    log.append([UsageRow(1.0, "a", "m", "ok", 1, 2, 0.0)])
    assert oct(log.path.stat().st_mode & 0o777) == "0o600"
    store = KeyStore(tmp_path / "clients" / "keys.jsonl")
    store.create("a")
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"


def test_the_clients_keys_never_reach_an_engine(tmp_path: Path, keyed) -> None:
    from animllm_cli.engine.command import build_engine_command

    loaded = load_config(config(tmp_path))
    command = build_engine_command(loaded, loaded.model("a"), vllm_version="0.10.1")
    assert not {"ARTIST_KEY", "BATCH_KEY"} & set(command.full_env())
    assert "HF_HUB_OFFLINE" in command.full_env()  # the rest of its environment is there


def test_every_api_is_counted_and_keeps_its_error_shape(tmp_path: Path, gateways, keyed) -> None:
    """The Messages and Responses APIs streamed (their usage in events after an `event:` line),
    Ollama's embeddings, and an error the relay answers (not raises) in Anthropic's shape."""
    gw = gateways(config(tmp_path, chunk_delay=0.3, limits={"request_timeout_s": 1}))
    artist, batch = KEYS["ARTIST_KEY"], KEYS["BATCH_KEY"]
    claude = anthropic.Anthropic(base_url=gw.url, api_key=artist, max_retries=0, timeout=30)
    with claude.messages.stream(model="a", max_tokens=2, messages=HI) as stream:
        assert "".join(stream.text_stream).split() == ["t0", "t1"]
    events = list(sdk(gw, artist).responses.create(model="a", input="hi", max_output_tokens=2, stream=True))
    assert events[-1].type == "response.completed"
    vectors = ollama.Client(host=gw.url, headers={"authorization": f"Bearer {batch}"}).embed(model="a", input=["x"])
    assert vectors.embeddings == [[0.0, 1.0]]
    with pytest.raises(anthropic.InternalServerError) as late:  # 10 tokens at 0.3 s: past request_timeout_s
        claude.messages.create(model="a", max_tokens=10, messages=HI)
    assert late.value.status_code == 504 and late.value.body["error"]["type"] == "timeout_error"
    metrics = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {artist}"})
    assert metrics.status_code == 403  # every client's usage is there: admins only
    gw.stop()
    rows = {(r["client"], r["model"]): r for r in json.loads(run_cli("usage", "--json").stdout)["usage"]}
    assert (rows["artist", "a"]["tokens_in"], rows["artist", "a"]["tokens_out"]) == (6, 4)
    assert (rows["artist", "a"]["requests"], rows["artist", "a"]["errors"]) == (3, 1)
    assert (rows["batch", "a"]["requests"], rows["batch", "a"]["tokens_in"]) == (1, 2)


def test_serve_warns_of_a_client_with_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from animllm_cli.cli.serve import _remote_key_problems

    monkeypatch.setenv("ARTIST_KEY", KEYS["ARTIST_KEY"])
    monkeypatch.delenv("BATCH_KEY", raising=False)
    loaded = load_config(config(tmp_path))
    assert _remote_key_problems(loaded) == ["client 'batch' has no key: set BATCH_KEY or run `animllm keys create "
                                            "batch`", "client 'ops' has no key: run `animllm keys create ops`"]
    KeyStore().create("ops")
    assert _remote_key_problems(loaded) == ["client 'batch' has no key: set BATCH_KEY or run `animllm keys create "
                                            "batch`"]

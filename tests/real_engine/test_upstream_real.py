"""Models served elsewhere, with real vLLM (CPU build) on the far side: the shared tiny-b
engine, reached at its own URL with its own key, plays a remote vLLM, and the shared
gateway plays a remote animllm. This test's gateway serves a local model (its one engine
start) and the remote ones. The remote killed mid-stream is a fake vLLM beside the real
one, which holds its answer open so that the kill always lands mid-answer: that stream
ends with an error event, and the real URL keeps answering."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.support.gateways import RunningGateway, remote_fake_vllm, start_bound_s, start_gateway
from tests.support.helpers import free_port, tiny_config

pytestmark = pytest.mark.engine
REMOTE = "tiny-b"  # the shared engine, and the name the remotes answer with
HOLD_AFTER = 16    # chunks the fake streams before it holds: more than step 1's answers, fewer than the long one's


def add_remotes(config: Path, remote_urls: list[str], gateway_url: str) -> Path:
    text = config.read_text() + (
        f"  r: {{upstream: {{urls: {json.dumps(remote_urls)}, model: {REMOTE}, api_key_env: REMOTE_KEY, "
        f"health_interval_s: 600}}, tasks: [remote]}}\n"  # one check, at start: the test decides the rest
        f"  g: {{upstream: {{urls: [\"{gateway_url}/v1\"], model: {REMOTE}, health_interval_s: 1}}}}\n")
    config.write_text(text)
    return config


def test_local_and_remote_models_through_one_gateway(three_tiny_models: dict[str, Path], tmp_path: Path,
                                                     shared_gateway: RunningGateway,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    engine = shared_gateway.gateway.pool.engine_for(REMOTE)
    monkeypatch.setenv("REMOTE_KEY", engine.command.api_key)  # the fake asks the same key, as a second URL would
    hold = {"FAKE_VLLM_MODE": "hold-mid-stream", "FAKE_VLLM_AFTER": str(HOLD_AFTER)}
    with remote_fake_vllm(tmp_path, served_name=REMOTE, key=engine.command.api_key, env=hold) as (fake_url, fake):
        local = {"tiny-a": three_tiny_models["tiny-a"]}
        config = add_remotes(tiny_config(tmp_path / "animllm.yaml", local, port=free_port()),
                             [engine.base_url, fake_url], shared_gateway.url)
        gw = start_gateway(tmp_path, config, model="tiny-a")
        try:
            timeout = start_bound_s(gw.gateway.loaded) + 300
            sdk = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=timeout)
            ask = {"max_tokens": 8, "extra_body": {"ignore_eos": True},
                   "messages": [{"role": "user", "content": "hello"}]}

            # 1. A local and a remote model, streamed and not, through one gateway; no switch
            # for the remote one. The remote names the model by its own name (REMOTE).
            for model in ("tiny-a", "r", "remote", "g"):
                reply = sdk.chat.completions.create(model=model, **ask)
                assert reply.usage.completion_tokens == 8, (model, reply)
                chunks = list(sdk.chat.completions.create(model=model, stream=True, **ask))
                assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content is not None) >= 1
            assert reply.model == REMOTE and {c.model for c in chunks} == {REMOTE}  # through the remote animllm
            assert [s.to_model for s in gw.gateway.pool.switches] == ["tiny-a"]
            remote = gw.gateway.upstreams.get("r")
            assert all(u.healthy for u in remote.upstreams) and all(u.sent >= 1 for u in remote.upstreams)

            # 2. The remote killed mid-stream: the stream ends with an error event, never [DONE].
            # The real URL is out of rotation for this one request, so that it goes to the fake,
            # which holds its answer open: the kill lands mid-answer on any machine.
            real, held = remote.upstreams
            long = {"model": "r", "stream": True, "max_tokens": 400, "ignore_eos": True,
                    "messages": [{"role": "user", "content": "go on"}]}
            real.healthy = False
            with httpx.Client(base_url=gw.url, timeout=timeout) as client:
                with client.stream("POST", "/v1/chat/completions", json=long) as stream:
                    lines = stream.iter_lines()
                    first = next(line for line in lines if line.startswith("data: "))
                    real.healthy = True
                    fake.kill()
                    rest = [line[6:] for line in lines if line.startswith("data: ")]
            assert json.loads(first[6:])["choices"], first
            assert "[DONE]" not in rest and "stopped mid-answer" in json.loads(rest[-1])["error"]["message"]

            # 3. The real URL keeps answering; the dead one is out of rotation. Put back in
            # as if its health were unknown, and first in turn, a request tries it, finds no
            # server there, and fails over before the client sees anything.
            assert not held.healthy
            held.healthy, held.picked = None, 0
            for _ in range(4):
                assert sdk.chat.completions.create(model="r", **ask).usage.completion_tokens == 8
            # A new connection is refused; a kept-alive one from before the kill is reset or closed.
            signs = ("cannot connect", "reset by peer", "Server disconnected")
            assert not held.healthy and any(sign in held.problem for sign in signs), held.problem
            assert [u.healthy for u in remote.upstreams] == [True, False]
            failovers = httpx.get(f"{gw.url}/metrics").text
            assert 'animllm_upstream_failovers_total{model="r"} 1.0' in failovers
        finally:
            gw.stop()

"""Models served elsewhere, over real vLLM (CPU build): two separately started vLLM
servers with their own key play the remote machine, and a second animllm gateway with a
key plays a remote animllm. One gateway serves a local model and the remote ones; a
remote killed mid-stream ends that stream with an error event, and the other URL keeps
answering. One test, so that the three engine starts are paid once."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from animllm_cli.engine import processes
from tests.support.real_engines import stop_group, wait_healthy
from tests.support.gateways import start_bound_s, start_gateway
from tests.support.helpers import free_port, tiny_config, write

pytestmark = pytest.mark.engine
REMOTE_KEY, GATEWAY_KEY = "key-of-the-remote-vllm", "key-of-the-remote-gateway"


@contextlib.contextmanager
def remote_vllms(model: Path, tmp_path: Path, count: int) -> Iterator[list[tuple[str, subprocess.Popen]]]:
    """`count` vLLM servers of `model` served as 'there', started at once, each asking REMOTE_KEY."""
    started: list[tuple[int, subprocess.Popen, Path]] = []
    try:
        for index in range(count):
            port, log = free_port(), tmp_path / f"remote-{index}.log"
            line = (f"VLLM_CPU_KVCACHE_SPACE=1 VLLM_API_KEY={REMOTE_KEY} exec {sys.executable} -m "
                    f"vllm.entrypoints.openai.api_server --model {model} --served-model-name there "
                    f"--host 127.0.0.1 --port {port} --gpu-memory-utilization 0.3 --max-model-len 512 "
                    f"--max-num-seqs 8 --enforce-eager --dtype bfloat16")
            with log.open("wb") as sink:
                proc = subprocess.Popen(line, shell=True, start_new_session=True, stdout=sink,
                                        stderr=subprocess.STDOUT)
            started.append((port, proc, log))
        for port, proc, log in started:
            wait_healthy(proc, port, log)
        yield [(f"http://127.0.0.1:{port}/v1", proc) for port, proc, _ in started]
    finally:
        for _, proc, _ in started:
            stop_group(proc.pid)
            proc.wait(timeout=30)


def remote_gateway_config(tmp_path: Path, url: str) -> Path:
    """The remote animllm: a gateway whose model `b` is the vLLM at `url`."""
    return write(tmp_path / "remote-gateway.yaml", f"""
        inherit_defaults: false
        models:
          b: {{upstream: {{urls: ["{url}"], model: there, api_key_env: REMOTE_KEY, health_interval_s: 1}}}}
    """)


def add_remotes(config: Path, remote_urls: list[str], gateway_url: str) -> Path:
    text = config.read_text() + (
        f"  r: {{upstream: {{urls: {json.dumps(remote_urls)}, model: there, api_key_env: REMOTE_KEY, "
        f"health_interval_s: 600}}, tasks: [remote]}}\n"  # one check, at start: the test decides the rest
        f"  g: {{upstream: {{urls: [\"{gateway_url}/v1\"], model: b, api_key_env: GATEWAY_KEY, "
        f"health_interval_s: 1}}}}\n")
    config.write_text(text)
    return config


def events_of(stream: httpx.Response) -> list[str]:
    return [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]


def test_local_and_remote_models_through_one_gateway(three_tiny_models: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    monkeypatch.setenv("REMOTE_KEY", REMOTE_KEY)
    monkeypatch.setenv("GATEWAY_KEY", GATEWAY_KEY)
    local = {"tiny-a": three_tiny_models["tiny-a"]}
    with remote_vllms(three_tiny_models["tiny-b"], tmp_path, 2) as remotes:
        (url_1, proc_1), (url_2, _) = remotes
        far = start_gateway(tmp_path, remote_gateway_config(tmp_path, url_2), model="b", key=GATEWAY_KEY)
        config = add_remotes(tiny_config(tmp_path / "animllm.yaml", local, port=free_port()), [url_1, url_2], far.url)
        gw = start_gateway(tmp_path, config, model="tiny-a")
        try:
            timeout = start_bound_s(gw.gateway.loaded) + 300
            sdk = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=timeout)
            ask = {"max_tokens": 8, "extra_body": {"ignore_eos": True},
                   "messages": [{"role": "user", "content": "hello"}]}

            # 1. A local and a remote model, streamed and not, through one gateway; no switch
            # for the remote one. The remote names the model by its own name ("there").
            for model in ("tiny-a", "r", "remote", "g"):
                reply = sdk.chat.completions.create(model=model, **ask)
                assert reply.usage.completion_tokens == 8, (model, reply)
                chunks = list(sdk.chat.completions.create(model=model, stream=True, **ask))
                assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content is not None) >= 1
            assert reply.model == "there" and {c.model for c in chunks} == {"there"}  # through the remote animllm
            assert [s.to_model for s in gw.gateway.pool.switches] == ["tiny-a"]
            remote = gw.gateway.upstreams.get("r")
            assert all(u.healthy for u in remote.upstreams) and all(u.sent >= 1 for u in remote.upstreams)

            # 2. The remote killed mid-stream: the stream ends with an error event, never [DONE].
            long = {"model": "r", "stream": True, "max_tokens": 400, "ignore_eos": True,
                    "messages": [{"role": "user", "content": "go on"}]}
            sent_before = {u.url: u.sent for u in remote.upstreams}
            with httpx.Client(base_url=gw.url, timeout=timeout) as client:
                with client.stream("POST", "/v1/chat/completions", json=long) as stream:
                    lines = stream.iter_lines()
                    first = next(line for line in lines if line.startswith("data: "))
                    # The URL it went to: by what was sent, not by what is outstanding (on a
                    # loaded machine the gateway may have read the whole answer already).
                    serving = next(u for u in remote.upstreams if u.sent > sent_before[u.url])
                    victim = proc_1 if serving.url == url_1.removesuffix("/v1") else remotes[1][1]
                    processes.signal_all(victim.pid, {}, signal.SIGKILL)
                    rest = [line[6:] for line in lines if line.startswith("data: ")]
            assert json.loads(first[6:])["choices"], first
            assert "[DONE]" not in rest and "stopped mid-answer" in json.loads(rest[-1])["error"]["message"]

            # 3. The other URL keeps answering; the dead one is out of rotation. Put back in
            # as if its health were unknown, and first in turn, a request tries it, finds no
            # server there, and fails over before the client sees anything.
            assert not serving.healthy
            serving.healthy, serving.picked = None, 0
            for _ in range(4):
                assert sdk.chat.completions.create(model="r", **ask).usage.completion_tokens == 8
            # A new connection is refused; a kept-alive one from before the kill is reset or closed.
            signs = ("cannot connect", "reset by peer", "Server disconnected")
            assert not serving.healthy and any(sign in serving.problem for sign in signs), serving.problem
            assert [u.healthy for u in remote.upstreams].count(True) == 1
            failovers = httpx.get(f"{gw.url}/metrics").text
            assert 'animllm_upstream_failovers_total{model="r"} 1.0' in failovers
        finally:
            gw.stop()
            far.stop()

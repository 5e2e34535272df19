"""One catalogue: a task (typed in any case) names the same model in every command and in
an HTTP request; where two models share a task, the loaded one wins wherever a gateway
knows what is loaded, and the first in the config wins where nothing is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from animllm_cli import paths
from animllm_cli.config import load_config
from animllm_cli.config.catalogue import Catalogue
from tests.support.gateways import fake_gateway_config, start_bound_s, start_gateway
from tests.support.helpers import free_port, run_cli

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = fake_gateway_config(tmp_path)  # a: tasks [chat], alias alpha; b: [code]; v: [vision]
    monkeypatch.setenv("ANIMLLM_CONFIG", str(path))
    return path


@pytest.fixture
def gateway(tmp_path: Path, config: Path):
    running = start_gateway(tmp_path, config)
    yield running
    running.stop()


def out_json(*args: str) -> dict:
    result = run_cli(*args)
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def test_offline_commands_resolve_a_task(config: Path, tmp_path: Path) -> None:
    assert out_json("config", "show", "Code", "--json")["name"] == "b"
    assert [m["model"] for m in out_json("plan", "CODE", "--vram", "16", "--json")["models"]] == ["b"]
    log = paths.state_dir() / "logs" / "b.log"
    log.parent.mkdir(parents=True)
    log.write_text("the log of b\n")
    assert run_cli("logs", "--model", "code", "-n", "1").stdout == "the log of b\n"
    # --max-model-len for one model: the flag layer targets the model the task names.
    shown = out_json("config", "show", "code", "--max-model-len", "77", "--json")
    assert shown["settings"]["max_model_len"] == 77


def test_gateway_commands_and_http_resolve_a_task(gateway) -> None:
    reply = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "CODE", **CHAT}, timeout=30)
    assert reply.status_code == 200 and reply.json()["model"] == "b"
    assert out_json("switch", "vision", "--json")["to_model"] == "v"
    assert out_json("chat", "Code", "-p", "hi", "--max-tokens", "2", "--json")["model"] == "b"
    bench = out_json("bench", "code", "-n", "2", "--warmup", "0", "--input-len", "4", "--output-len", "2",
                     "--json")
    assert bench["model"] == "b"


def test_serve_resolves_a_task(config: Path) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    serve = subprocess.Popen([sys.executable, "-m", "animllm_cli", "serve", "code", "--port", str(free_port())],
                             stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.monotonic() + start_bound_s(load_config(config))
    try:
        for line in serve.stderr:
            lines.append(line)
            if "ready in" in line or time.monotonic() > deadline:
                break
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=60)
    assert any(line.startswith("b ready in") for line in lines), lines


def test_a_shared_task_prefers_the_loaded_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = fake_gateway_config(tmp_path, models={"v": {"tasks": ["vision", "chat"]}})
    monkeypatch.setenv("ANIMLLM_CONFIG", str(path))
    assert out_json("config", "show", "chat", "--json")["name"] == "a"   # nothing loaded: the first in the config
    gateway = start_gateway(tmp_path, path, model="v")
    try:
        reply = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "chat", **CHAT}, timeout=30)
        assert reply.json()["model"] == "v"                                # no needless switch
        assert out_json("chat", "chat", "-p", "hi", "--max-tokens", "2", "--json")["model"] == "v"
        assert out_json("switch", "chat", "--json")["outcome"] == "already loaded"
    finally:
        gateway.stop()


def test_catalogue_rule() -> None:
    catalogue = Catalogue.from_models({
        "a": {"source": "org/A", "aliases": ["alpha"], "tasks": ["chat"]},
        "b": {"source": "org/B", "tasks": ["chat", "code"]},
        "c": {"source": "org/A", "aliases": ["chat"]},   # an alias beats a task; a shared source means the first
    })
    assert catalogue.find("ALPHA") == "a" and catalogue.find("org/a") == "a" and catalogue.find("CHAT") == "c"
    assert catalogue.find("code") == "b" and catalogue.find("nope") is None
    tasks_only = Catalogue.from_models({"a": {"source": "x", "tasks": ["chat"]}, "b": {"source": "y", "tasks": ["chat"]}})
    assert tasks_only.find("chat") == "a" and tasks_only.find("chat", loaded=("b",)) == "b"

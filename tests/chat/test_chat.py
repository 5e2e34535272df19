"""`animllm chat` scripted through stdin against a gateway over fake engines: the REPL's
transcript and the requests it sent; one-shot output for scripts; the error paths."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests.support.gateways import fake_gateway_config, start_gateway
from tests.support.helpers import free_port, run_cli


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = fake_gateway_config(tmp_path)
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))  # chat reads the same config as the gateway
    running = start_gateway(tmp_path, config)
    yield running
    running.stop()


def png(path: Path, size: int = 64) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + b"\0" * (size - 16))
    return path


def test_scripted_repl_session(gateway, tmp_path: Path) -> None:
    saved = tmp_path / "conversation.md"
    script = "\n".join(["hello", "/system be brief", "second", "/model code", "third", "/clear", "fourth",
                        f"/save {saved}", "/nonsense", "/exit", "never sent"]) + "\n"
    result = run_cli("chat", "-i", "--max-tokens", "2", input=script)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "t0 t1 \n" * 4, result.stderr          # four answers, nothing else on stdout
    assert "system prompt set" in result.stderr and "now talking to b" in result.stderr
    assert "switched a -> b" in result.stderr and "conversation cleared" in result.stderr
    assert "unknown command /nonsense" in result.stderr
    assert result.stderr.count("2 tokens · TTFT") == 4               # a stats line after each answer

    sent = [r for r in gateway.requests_seen() if r.get("messages")]
    assert [r["model"] for r in sent] == ["a", "a", "b", "b"]
    assert sent[0]["messages"] == [{"role": "user", "content": "hello"}]
    assert sent[1]["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
                                   {"role": "assistant", "content": "t0 t1 "}, {"role": "user", "content": "second"}]
    assert len(sent[2]["messages"]) == 6                             # history kept across /model
    assert sent[3]["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "fourth"}]
    assert saved.read_text().startswith("# Chat with b") and "fourth" in saved.read_text()


def test_repl_save_as_json(gateway, tmp_path: Path) -> None:
    saved = tmp_path / "c.json"
    run_cli("chat", "-i", "--max-tokens", "1", input=f"hi\n/save {saved}\n")
    assert json.loads(saved.read_text())["messages"] == [{"role": "user", "content": "hi"},
                                                         {"role": "assistant", "content": "t0 "}]


def test_one_shot_prints_exactly_the_answer(gateway) -> None:
    result = run_cli("chat", "-p", "hi", "--max-tokens", "3")
    assert result.exit_code == 0 and result.stdout == "t0 t1 t2 \n"
    assert "3 tokens" in result.stderr


def test_one_shot_from_stdin(gateway) -> None:
    result = run_cli("chat", "code", "--max-tokens", "2", input="a question from a pipe\n")
    assert result.exit_code == 0 and result.stdout == "t0 t1 \n"
    assert gateway.requests_seen()[-1]["messages"][-1]["content"] == "a question from a pipe"
    assert gateway.requests_seen()[-1]["model"] == "b"


def test_one_shot_json(gateway) -> None:
    result = run_cli("chat", "-p", "hi", "--json", "--max-tokens", "2", "--temperature", "0.5", "--seed", "7")
    data = json.loads(result.stdout)
    assert data["choices"][0]["message"]["content"] == "t0 t1" and data["usage"]["completion_tokens"] == 2
    assert {"temperature", "seed", "max_tokens"} <= set(gateway.requests_seen()[-1]["keys"])


@pytest.mark.parametrize("endpoint", ["messages", "responses"])
def test_the_other_apis_streamed_and_as_json_with_a_system_prompt(gateway, endpoint: str) -> None:
    result = run_cli("chat", "b", "--endpoint", endpoint, "-p", "hi", "--system", "be terse", "--max-tokens", "3")
    assert result.exit_code == 0 and result.stdout == "t0 t1 t2 \n", result.stderr
    assert "3 tokens" in result.stderr
    sent = gateway.requests_seen()[-1]
    assert sent["path"] == f"/v1/{endpoint}" and sent["model"] == "b" and sent["stream"] is True
    if endpoint == "messages":  # Anthropic's API takes the system prompt beside the messages
        assert sent["system"] == "be terse" and sent["anthropic_messages"] == [{"role": "user", "content": "hi"}]
    else:
        assert sent["input"] == [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"}]
    answered = json.loads(run_cli("chat", "b", "--endpoint", endpoint, "-p", "hi", "--json", "--max-tokens", "2").stdout)
    assert answered["usage"]["output_tokens"] == 2 and answered["model"] == "b"
    wrong = run_cli("chat", "--endpoint", "completions", "-p", "hi")
    assert wrong.exit_code == 2 and "expected one of chat, messages, responses" in wrong.stderr


def test_system_option(gateway) -> None:
    run_cli("chat", "-p", "hi", "--system", "you are terse", "--max-tokens", "1")
    assert gateway.requests_seen()[-1]["messages"][0] == {"role": "system", "content": "you are terse"}


def test_unknown_model_is_exit_1_with_the_servers_message(gateway) -> None:
    result = run_cli("chat", "gpt-4", "-p", "hi")
    assert result.exit_code == 1 and "model 'gpt-4' not found; available: a, b, v" in result.stderr


def test_server_not_running_says_how_to_start_it() -> None:
    result = run_cli("chat", "-p", "hi", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1 and "nothing answers at" in result.stderr and "animllm serve" in result.stderr


def test_any_openai_server_with_url(gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine behind the gateway is such a server; it takes only its own key."""
    engine = gateway.gateway.pool.engine
    refused = run_cli("chat", "a", "-p", "hi", "--max-tokens", "1", "--url", engine.base_url)
    assert refused.exit_code == 1 and "401" in refused.stderr
    monkeypatch.setenv("ENGINE_KEY", engine.command.api_key)
    result = run_cli("chat", "a", "-p", "hi", "--max-tokens", "1", "--url", engine.base_url, "--api-key-env", "ENGINE_KEY")
    assert result.exit_code == 0 and result.stdout == "t0 \n"


def test_empty_prompt(gateway) -> None:
    result = run_cli("chat", input="   \n")
    assert result.exit_code == 2 and "empty prompt" in result.stderr


def test_image_is_sent_as_a_data_url_to_a_vision_model(gateway, tmp_path: Path) -> None:
    result = run_cli("chat", "vision", "-p", "what is this?", "--image", str(png(tmp_path / "x.png")), "--max-tokens", "1")
    assert result.exit_code == 0, result.stderr
    content = gateway.requests_seen()[-1]["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "what is this?"}
    assert content[1]["type"] == "image_url" and content[1]["image_url"]["url"].startswith("data:image/png;base64,")


@pytest.mark.parametrize(("setup", "fragment"), [
    (lambda p: p / "missing.png", "image not found"),
    (lambda p: (p / "notes.png").write_text("not an image") and p / "notes.png", "not an image"),
    (lambda p: p, "not a file"),
])
def test_bad_images_are_refused_before_sending(gateway, tmp_path: Path, setup, fragment: str) -> None:
    result = run_cli("chat", "vision", "-p", "x", "--image", str(setup(tmp_path)))
    assert result.exit_code == 2 and fragment in result.stderr
    assert gateway.requests_seen() == []


def test_oversized_image_is_refused(gateway, tmp_path: Path) -> None:
    big = png(tmp_path / "big.png")
    with big.open("r+b") as handle:
        handle.truncate(21 * 1024 * 1024)
    result = run_cli("chat", "vision", "-p", "x", "--image", str(big))
    assert result.exit_code == 2 and "image too large" in result.stderr


def test_image_to_a_model_without_vision_is_refused(gateway, tmp_path: Path) -> None:
    result = run_cli("chat", "code", "-p", "x", "--image", str(png(tmp_path / "x.png")))
    assert result.exit_code == 2 and "has no vision task" in result.stderr
    assert gateway.requests_seen() == []


def test_chat_moves_to_a_remote_model_without_a_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fakes.upstream import FakeUpstream

    remote = FakeUpstream("far", ["there"]).start()
    config = fake_gateway_config(tmp_path, extra_models={"r": {"upstream": {"urls": [remote.url], "model": "there"}}})
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    running = start_gateway(tmp_path, config)
    try:
        result = run_cli("chat", "-i", "--max-tokens", "2", input="hello\n/model r\nthere?\n/exit\n")
    finally:
        running.stop()
        remote.stop()
    assert result.exit_code == 0, result.stderr
    assert "'r' is served by" in result.stderr and "switched" not in result.stderr
    assert result.stdout.splitlines()[-1] == "t0t1t2"  # the remote's answer
    assert [s["body"]["model"] for s in remote.seen if "body" in s] == ["there"]

"""`animllm bench` with the user's own prompts, the chat endpoint, SLOs and goodput, and
arrivals shaped as vLLM shapes them (burstiness, ramp-up), against the gateway over fake
engines that record every request they get."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.gateways import bench_gateway
from tests.support.helpers import run_cli, run_json


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with bench_gateway(tmp_path, monkeypatch, "{ttft_s_max: 5, tokens_per_s_min: 1}") as running:
        yield running


def received(tmp_path: Path) -> list[dict]:
    """What the fake engines were sent, streamed requests only, in order."""
    lines = (tmp_path / "requests.jsonl").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if entry.get("stream") and not entry.get("gone")]


def test_prompts_file_goes_out_as_written(gateway, tmp_path: Path) -> None:
    prompts = tmp_path / "studio.jsonl"
    prompts.write_text("\n".join(json.dumps(entry) for entry in [
        {"prompt": "light the kitchen set", "output_tokens": 3},
        {"prompt": "render pass for shot 12"},
        {"prompt": "denoise frame 40", "output_tokens": 5}]) + "\n")
    data = run_json("bench", "--prompts", str(prompts), "--warmup", "0", "--json")
    level = data["levels"][0]["summary"]
    assert data["prompts"] == str(prompts) and data["endpoint"] == "/v1/completions"
    assert level["completed"] == 3                       # -n: the file's count
    sent = received(tmp_path)
    assert [entry["prompt"] for entry in sent] == ["light the kitchen set", "render pass for shot 12", "denoise frame 40"]
    assert [entry["max_tokens"] for entry in sent] == [3, 64, 5]  # the file's lengths, else --output-len's default
    assert level["output_tokens"] == 3 + 64 + 5

    run_json("bench", "--prompts", str(prompts), "--warmup", "0", "-n", "4", "--output-len", "2", "--json")
    again = received(tmp_path)[3:]
    assert [entry["max_tokens"] for entry in again] == [2, 2, 2, 2]  # given on the command line: it wins
    assert again[3]["prompt"] == "light the kitchen set"            # more requests than prompts: the file cycles


def test_chat_messages_go_to_the_chat_endpoint(gateway, tmp_path: Path) -> None:
    prompts = tmp_path / "chat.jsonl"
    messages = [{"role": "system", "content": "You are a lighting TD."}, {"role": "user", "content": "key light?"}]
    prompts.write_text(json.dumps({"messages": messages, "max_tokens": 4}) + "\n")
    data = run_json("bench", "--prompts", str(prompts), "--warmup", "0", "-n", "2", "--json")
    assert data["endpoint"] == "/v1/chat/completions"
    assert data["levels"][0]["summary"]["output_tokens"] == 8
    sent = received(tmp_path)
    assert all(entry["path"] == "/v1/chat/completions" and entry["messages"] == messages for entry in sent)
    assert all(entry["ignore_eos"] is True for entry in sent)
    refused = run_cli("bench", "--prompts", str(prompts), "--endpoint", "completions")
    assert refused.exit_code == 2 and "chat messages" in refused.stderr


def test_random_prompts_to_chat_are_the_model_tokens_as_text(gateway, tmp_path: Path) -> None:
    data = run_json("bench", "--endpoint", "chat", "-n", "3", "--warmup", "0", "--input-len", "5",
                    "--output-len", "2", "--no-ignore-eos", "--json")
    assert data["levels"][0]["summary"]["completed"] == 3
    sent = received(tmp_path)
    contents = [entry["messages"][0]["content"] for entry in sent]
    assert all(len(text.split()) == 5 and text.startswith("w") for text in contents)  # /detokenize of 5 ids
    assert len(set(contents)) == 3                        # distinct: no prefix cache standing in for prefill
    assert all(entry["ignore_eos"] is None for entry in sent)


@pytest.mark.parametrize("endpoint, path", [("messages", "/v1/messages"), ("responses", "/v1/responses")])
def test_the_messages_and_responses_apis_are_measured_on_their_own_events(gateway, tmp_path: Path, endpoint: str,
                                                                         path: str) -> None:
    """TTFT at the first content event of Anthropic's stream (content_block_delta) or of the
    Responses API's (response.output_text.delta); token counts from their usage events."""
    data = run_json("bench", "--endpoint", endpoint, "-n", "3", "--warmup", "0", "--input-len", "5",
                    "--output-len", "4", "--json")
    summary = data["levels"][0]["summary"]
    assert data["endpoint"] == path and summary["completed"] == 3 and summary["failed"] == 0
    assert summary["output_tokens"] == 12 and summary["input_tokens"] == 9
    assert summary["ttft_ms"]["mean"] > 0
    assert [entry["path"] for entry in received(tmp_path)] == [path] * 3


def test_a_system_prompt_goes_beside_the_messages_of_anthropics_api(gateway, tmp_path: Path) -> None:
    prompts = tmp_path / "chat.jsonl"
    messages = [{"role": "system", "content": "You are a lighting TD."}, {"role": "user", "content": "key light?"}]
    prompts.write_text(json.dumps({"messages": messages, "max_tokens": 2}) + "\n")
    data = run_json("bench", "--prompts", str(prompts), "--endpoint", "messages", "--warmup", "0", "-n", "1", "--json")
    assert data["levels"][0]["summary"]["completed"] == 1
    sent, = received(tmp_path)
    assert sent["system"] == "You are a lighting TD." and sent["anthropic_messages"] == messages[1:]


def test_goodput_as_vllm_spells_it(gateway) -> None:
    # `--goodput ttft:MS tpot:MS`: vLLM's spelling, the second pair in MODEL's place.
    data = run_json("bench", "--goodput", "ttft:60000", "tpot:60000", "-n", "4", "--warmup", "0", "--output-len", "3",
                    "--json")
    assert data["goodput_slo"] == {"ttft_ms": 60000.0, "tpot_ms": 60000.0, "e2el_ms": None}
    summary = data["levels"][0]["summary"]
    assert summary["good_requests"] == 4 and summary["request_goodput"] == pytest.approx(4 / summary["duration_s"])
    after_model = run_json("bench", "a", "--goodput", "e2el:0", "tpot:60000", "-n", "3", "--warmup", "0", "--json")
    assert after_model["model"] == "a" and after_model["levels"][0]["summary"]["good_requests"] == 0
    bad = run_cli("bench", "--goodput", "ttft:500", "speed:3")
    assert bad.exit_code == 2 and "speed" in bad.stderr
    stray = run_cli("bench", "a", "b")
    assert stray.exit_code == 2 and "unexpected argument 'b'" in stray.stderr


def test_check_gates_on_the_share_within_slo(gateway) -> None:
    env = {"ANIMLLM_EXPECTATIONS__P__GOOD_SHARE_MIN": "0.9"}
    unsaid = run_cli("bench", "-n", "2", "--check", env=env)
    assert unsaid.exit_code == 2 and "no SLO says what is good" in unsaid.stderr
    met = run_cli("bench", "-n", "3", "--warmup", "0", "--check", "--goodput", "ttft:60000", env=env)
    assert met.exit_code == 0, met.stdout + met.stderr
    assert "requests within SLO (share)" in met.stdout
    from_profile = run_cli("bench", "-n", "3", "--warmup", "0", "--check",
                           env={**env, "ANIMLLM_EXPECTATIONS__P__SLO__E2EL_MS": "0.001"})
    assert from_profile.exit_code == 1 and "MISSED" in from_profile.stdout


def test_burstiness_and_ramp_up_levels(gateway) -> None:
    data = run_json("bench", "--request-rate", "200", "--burstiness", "0.5", "-n", "6", "--warmup", "0",
                    "--output-len", "2", "--json")
    level = data["levels"][0]
    assert (level["request_rate"], level["burstiness"], level["ramp_up"]) == (200, 0.5, None)
    ramp = run_json("bench", "--ramp-up", "linear:50:400", "-n", "6", "--warmup", "0", "--output-len", "2", "--json")
    level = ramp["levels"][0]
    assert level["concurrency"] is None and level["ramp_up"] and level["summary"]["completed"] == 6
    human = run_cli("bench", "--ramp-up", "exponential:50:400", "-n", "4", "--warmup", "0", "--output-len", "2")
    assert human.exit_code == 0 and "ramp-up" in human.stdout


@pytest.mark.parametrize("args, words", [
    (["--burstiness", "2"], "give --request-rate or --ramp-up"),
    (["--burstiness", "0", "--request-rate", "1"], "must be above 0"),
    (["--concurrency", "4", "--request-rate", "1"], "give one"),
    (["--ramp-up", "linear:1:5", "--request-rate", "2"], "give one"),
    (["--ramp-up", "linear:1:5", "--plot", "r.svg"], "drop --plot"),
    (["--endpoint", "speech"], "expected one of completions, chat, messages, responses"),
])
def test_refusals_before_anything_is_sent(args: list[str], words: str) -> None:
    result = run_cli("bench", *args)
    assert result.exit_code == 2 and words in result.stderr, result.stderr

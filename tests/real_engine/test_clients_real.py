"""Two clients' keys with the real `openai` SDK through a gateway whose model is the shared
tiny-b engine (real vLLM, CPU build), reached as a model served elsewhere, so that no
engine starts for it: each client's tokens are what vLLM's usage said, counted for the
stream that did not ask for its usage too, and `animllm usage --json` reads them all after
the gateway restarted in between."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.support.gateways import RunningGateway, start_bound_s, start_gateway
from tests.support.helpers import run_cli, write

pytestmark = pytest.mark.engine
KEYS = {"studio": "studio-" + "s" * 40, "ci": "ci-" + "c" * 40}
ASK = [{"role": "user", "content": "hello"}]


def test_two_clients_usage_counted_exactly_and_kept_across_a_restart(tmp_path: Path, shared_gateway: RunningGateway,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    engine = shared_gateway.gateway.pool.engine_for("tiny-b")
    monkeypatch.setenv("REMOTE_KEY", engine.command.api_key)
    monkeypatch.setenv("STUDIO_KEY", KEYS["studio"])
    monkeypatch.setenv("CI_KEY", KEYS["ci"])
    config = write(tmp_path / "animllm.yaml", f"""
        inherit_defaults: false
        models:
          tiny: {{upstream: {{urls: ["{engine.base_url}"], model: tiny-b, api_key_env: REMOTE_KEY}}}}
        default_model: tiny
        clients:
          studio: {{api_key_env: STUDIO_KEY}}
          ci: {{api_key_env: CI_KEY, models: [tiny], priority: -1}}
    """)
    said = {name: [0, 0, 0] for name in KEYS}  # requests, tokens in, tokens out: as vLLM's usage said them
    for _ in range(2):  # the gateway restarts between the two rounds
        gw = start_gateway(tmp_path, config, model="tiny")
        try:
            for name, key in KEYS.items():
                sdk = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0,
                                    timeout=start_bound_s(gw.gateway.loaded) + 120)
                ask = {"model": "tiny", "messages": ASK, "extra_body": {"ignore_eos": True}}
                reply = sdk.chat.completions.create(max_tokens=5, **ask)
                chunks = list(sdk.chat.completions.create(max_tokens=4, stream=True,
                                                          stream_options={"include_usage": True}, **ask))
                quiet = list(sdk.chat.completions.create(max_tokens=3, stream=True, **ask))  # asks no usage
                assert all(c.usage is None for c in quiet)
                for usage in (reply.usage, chunks[-1].usage):
                    said[name][1] += usage.prompt_tokens
                    said[name][2] += usage.completion_tokens
                said[name][1] += reply.usage.prompt_tokens  # the same prompt; ignore_eos: exactly 3 out
                said[name][2] += 3
                said[name][0] += 3
        finally:
            gw.stop()
    report = run_cli("usage", "--json")
    assert report.exit_code == 0, report.stderr
    counted = {row["client"]: [row["requests"], row["tokens_in"], row["tokens_out"]]
               for row in json.loads(report.stdout)["usage"] if row["model"] == "tiny"}
    assert counted == said and said["studio"][2] == 2 * (5 + 4 + 3)

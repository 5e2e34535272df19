"""The planner's KV bytes per token held against real vLLM.

The CPU build is given a known KV space (VLLM_CPU_KVCACHE_SPACE=1 GiB) and logs how many
tokens that holds. The planner's figure for the same model must give the same count.
Tolerance: 1 %. vLLM rounds the pool down to whole blocks (16 tokens each on CPU) and may
keep a block back; at ~1.4 million tokens that is far below 1 %, so anything larger means
the formula is wrong (a missed layer or KV head is 33-100 %, a wrong dtype 100 %).
The engine is the shared tiny-b, started from the same config the planner reads.
"""

from __future__ import annotations

import re

import pytest

from animllm_cli.gpu.planner import GIB, plan_models
from tests.support.gateways import RunningGateway

pytestmark = pytest.mark.engine
KV_SPACE_BYTES = 1 * GIB
TOLERANCE = 0.01


def test_planner_kv_tokens_match_vllm(shared_engines: RunningGateway) -> None:
    # tiny-b has 3 layers: a formula that ignored layers would still match a 2-layer model by luck.
    model = "tiny-b"
    loaded = shared_engines.gateway.loaded
    assert loaded.config.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    plan = plan_models(loaded, [model], 16 * GIB, "test").models[0]
    assert plan.kv_bytes_per_token == 2 * 3 * 1 * 64 * 2
    expected_tokens = KV_SPACE_BYTES // plan.kv_bytes_per_token

    text = shared_engines.gateway.pool.engine_for(model).log_path.read_text()
    match = re.search(r"KV cache size: ([\d,]+) tokens", text)
    assert match, text[-3000:]
    logged = int(match.group(1).replace(",", ""))
    print(f"vLLM: {logged:,} tokens in 1 GiB; planner: {expected_tokens:,} "
          f"({plan.kv_bytes_per_token} B/token); difference {abs(logged - expected_tokens) / expected_tokens:.4%}")
    assert abs(logged - expected_tokens) <= TOLERANCE * expected_tokens

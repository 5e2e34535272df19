"""Every model in the shipped config and the examples yields argv that the installed
vLLM's own argument parser accepts, so a flag vLLM does not know fails here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from animllm_cli.config import load_config
from animllm_cli.engine.command import build_engine_command
from tests.support.helpers import EXAMPLE_CONFIGS, SHIPPED_CONFIG
from tests.support.real_engines import VLLM_ARGV_CHECK

pytestmark = pytest.mark.engine


def _vllm_verdicts(argvs: list[list[str]]) -> list[str | None]:
    result = subprocess.run([sys.executable, str(VLLM_ARGV_CHECK)], input=json.dumps(argvs), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _all_model_argvs() -> dict[str, list[str]]:
    argvs = {}
    for config in [SHIPPED_CONFIG, *EXAMPLE_CONFIGS]:
        loaded = load_config(config)
        for name in loaded.local_model_names():  # a remote model has no engine here
            argv = build_engine_command(loaded, loaded.model(name)).argv
            argvs[f"{config.name}:{name}"] = argv[3:]  # after `<python> -m <module>`
    return argvs


def test_vllm_parses_every_configured_model() -> None:
    argvs = _all_model_argvs()
    assert len(argvs) >= 12  # shipped (4) + seed-original (4) + override (4) + beyond-the-box (2 local)
    # The multi-node engine's settings reach vLLM's argv (and its parser, below).
    ray = argvs["beyond-the-box.yaml:qwen72b"]
    assert ray[ray.index("--distributed-executor-backend") + 1] == "ray"
    assert ray[ray.index("--pipeline-parallel-size") + 1] == "2" and ray[ray.index("--tensor-parallel-size") + 1] == "2"
    unknown = ["--model", "org/m", "--no-such-flag", "1"]
    bad_choice = ["--model", "org/m", "--dtype", "float7"]
    bad_quant = ["--model", "org/m", "--quantization", "awq_turbo"]
    verdicts = _vllm_verdicts([*argvs.values(), unknown, bad_choice, bad_quant])
    *model_verdicts, unknown_verdict, bad_choice_verdict, bad_quant_verdict = verdicts
    # The checker can fail: vLLM rejects what it does not know.
    assert unknown_verdict and "--no-such-flag" in unknown_verdict
    assert bad_choice_verdict and "float7" in bad_choice_verdict
    assert bad_quant_verdict and "awq_turbo" in bad_quant_verdict
    rejected = {key: verdict for key, verdict in zip(argvs, model_verdicts) if verdict}
    assert rejected == {}

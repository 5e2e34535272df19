"""The fit planner's arithmetic and verdicts, on shipped cards and on local files."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

from animllm_cli.config import Overrides, load_config
from animllm_cli.gpu.model_facts import facts_for, safetensors_bytes
from animllm_cli.gpu.planner import GIB, plan_models
from tests.support.helpers import REPO_ROOT, run_cli, write

SEED = str(REPO_ROOT / "configs" / "examples" / "seed-original.yaml")


def _plans(config=None, vram_gib: float = 16, overrides: Overrides | None = None):
    loaded = load_config(config, overrides=overrides)
    return {p.model: p for p in plan_models(loaded, loaded.model_names(), int(vram_gib * GIB), "test").models}


def test_kv_bytes_per_token_follow_the_formula() -> None:
    plans = _plans()
    assert plans["coder"].kv_bytes_per_token == 2 * 28 * 4 * 128 * 2 == 56 * 1024
    assert plans["reasoning"].kv_bytes_per_token == 2 * 48 * 8 * 128 * 2 == 192 * 1024
    assert plans["qwen72b"].kv_bytes_per_token == 2 * 80 * 8 * 128 * 2 == 320 * 1024


def test_every_shipped_default_fits_16_gib() -> None:
    plans = _plans()
    assert {name: p.verdict for name, p in plans.items()} == dict.fromkeys(plans, "fits")
    result = run_cli("plan")
    assert result.exit_code == 0, result.stdout


def test_seed_original_bf16_14b_and_72b_awq_do_not_fit_16_gib() -> None:
    plans = _plans(SEED)
    assert plans["reasoning"].verdict == "does-not-fit"
    assert "weights 27.5 GiB" in plans["reasoning"].summary
    assert plans["qwen72b"].verdict == "does-not-fit"
    assert "weights 38.2 GiB" in plans["qwen72b"].summary
    assert plans["coder"].verdict == "does-not-fit"       # bf16 7B leaves nothing for KV at 0.85
    assert plans["reasoning"].suggestion.startswith("source: Qwen/Qwen2.5-14B-Instruct-AWQ")
    assert "max_model_len: 15360" in plans["reasoning"].suggestion  # AWQ alone does not reach 32K
    assert plans["qwen72b"].suggestion.startswith("cpu_offload_gb: ")
    assert "SLOW" in plans["qwen72b"].suggestion


def test_seed_original_on_the_command_line() -> None:
    result = run_cli("plan", "--config", SEED, "--vram", "16")
    assert result.exit_code == 1
    assert "weights 27.5 GiB" in result.stdout and "weights 38.2 GiB" in result.stdout


def test_plan_json_schema() -> None:
    result = run_cli("plan", "--config", SEED, "--vram", "16", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["schema_version"] == 1 and data["vram_gib"] == 16 and data["vram_basis"] == "--vram 16"
    reasoning = next(m for m in data["models"] if m["model"] == "reasoning")
    for key in ("verdict", "summary", "weight_bytes", "checkpoint_bytes", "kv_bytes_per_token", "kv_tokens",
                "kv_pool_bytes", "activation_bytes", "non_torch_bytes", "budget_bytes", "max_model_len",
                "need_bytes", "suggestion", "alternatives", "notes", "basis", "utilization"):
        assert key in reasoning
    assert "KV pool" in data["formula"]


def test_too_long_context_fits_partially_and_suggests_shorter_or_fp8() -> None:
    overrides = Overrides(settings={"max_model_len": (32768, "--max-model-len 32768")}, model="reasoning")
    plan = _plans(overrides=overrides)["reasoning"]
    assert plan.verdict == "fits-partially"
    assert 16384 < plan.kv_tokens < 32768
    assert plan.suggestion == f"max_model_len: {plan.kv_tokens // 1024 * 1024} (the longest context that fits)"
    assert any(alt.startswith("kv_cache_dtype: fp8") for alt in plan.alternatives)


def test_fp8_kv_cache_halves_bytes_per_token(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "models: {reasoning: {kv_cache_dtype: fp8, max_model_len: 32768}}\n")
    plan = _plans(config)["reasoning"]
    assert plan.kv_bytes_per_token == 96 * 1024 and plan.verdict == "fits"


def test_a_bigger_card_says_what_stays_loaded_together() -> None:
    loaded = load_config()
    report = plan_models(loaded, ["coder", "reasoning", "vision"], 48 * GIB, "test")
    assert report.co_resident and set(report.co_resident[0]) == {"coder", "reasoning", "vision"}
    assert plan_models(loaded, loaded.model_names(), 16 * GIB, "test").co_resident == []


def _fake_local_model(directory: Path, *, layers: int, kv_heads: int, tensor_bytes: int) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": layers, "num_attention_heads": 8,
        "num_key_value_heads": kv_heads, "hidden_size": 1024, "intermediate_size": 2816, "vocab_size": 32000,
        "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}))
    header = json.dumps({"w": {"dtype": "BF16", "shape": [tensor_bytes // 2], "data_offsets": [0, tensor_bytes]}}).encode()
    with (directory / "model.safetensors").open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header + b"\0" * tensor_bytes)
    return directory


def test_local_model_uses_config_json_and_safetensors_headers(tmp_path: Path) -> None:
    local = _fake_local_model(tmp_path / "m", layers=6, kv_heads=2, tensor_bytes=1_000_000)
    assert safetensors_bytes(local / "model.safetensors") == 1_000_000
    facts = facts_for(str(local), None)
    assert (facts.layers, facts.kv_heads, facts.head_dim, facts.weight_bytes) == (6, 2, 128, 1_000_000)
    config = write(tmp_path / "c.yaml", f"models: {{mine: {{source: {local}, profile: small, max_model_len: 4096}}}}\n")
    plan = _plans(config)["mine"]
    assert plan.kv_bytes_per_token == 2 * 6 * 2 * 128 * 2
    assert plan.basis.startswith("local files")


def test_hugging_face_cache_is_read_before_the_card(tmp_path: Path) -> None:
    snapshot = tmp_path / "hf" / "hub" / "models--Qwen--Qwen2.5-Coder-7B-Instruct-AWQ" / "snapshots" / "abc"
    _fake_local_model(snapshot, layers=4, kv_heads=1, tensor_bytes=4096)
    facts = facts_for("Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", snapshot)
    assert facts.weight_bytes == 4096 and facts.basis.startswith("Hugging Face cache")


def test_unknown_model_is_unknown_not_guessed(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "models: {mystery: {source: someone/unknown-13b, profile: small}}\n")
    plan = _plans(config)["mystery"]
    assert plan.verdict == "unknown" and "download" in plan.suggestion
    assert run_cli("plan", "mystery", "--config", str(config)).exit_code == 1


def test_utilisation_flag_changes_the_budget() -> None:
    low = _plans(overrides=Overrides(settings={"gpu_memory_utilization": (0.5, "--gpu-memory-utilization 0.5")}))
    assert low["reasoning"].verdict == "does-not-fit"
    result = run_cli("plan", "reasoning", "--gpu-memory-utilization", "0.5", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["models"][0]["utilization"] == 0.5


def test_the_smallest_share_still_holds_max_model_len() -> None:
    from animllm_cli.gpu.planner import plan_model, smallest_share

    loaded = load_config()
    for name in ("coder", "vision", "reasoning"):
        view = loaded.model(name)
        share = smallest_share(plan_model(loaded, view, 48 * GIB), 48 * GIB)
        at_share = plan_model(loaded, replace(view, settings={**view.settings, "gpu_memory_utilization": share}),
                              48 * GIB)
        assert at_share.verdict == "fits", (name, share, at_share.summary)
        below = replace(view, settings={**view.settings, "gpu_memory_utilization": round(share / 1.05 - 0.02, 2)})
        assert plan_model(loaded, below, 48 * GIB).verdict != "fits"  # it is the smallest, give or take the margin


def test_plan_together_says_which_sets_fit_and_with_which_shares(tmp_path: Path) -> None:
    small = ["--set", "models.coder.enforce_eager=true", "--set", "models.vision.enforce_eager=true",
             "--set", "models.coder.max_num_batched_tokens=2048", "--set", "models.vision.max_num_batched_tokens=2048"]
    default = run_cli("plan", "--together", "coder,vision", "--vram", "16", "--json")
    assert default.exit_code == 1 and json.loads(default.stdout)["fits"] is False
    placed = json.loads(default.stdout)["placements"]
    assert placed[0]["gpus"] == [0] and placed[1]["gpus"] is None     # coder fits, vision not beside it
    short = run_cli("plan", "--together", "coder,vision", "--vram", "16", "--max-model-len", "4096", *small, "--json")
    assert short.exit_code == 0, short.stdout
    report = json.loads(short.stdout)
    assert report["fits"] and all(p["basis"] == "smallest" and p["gpus"] == [0] for p in report["placements"])
    assert sum(p["bytes_per_gpu"] for p in report["placements"]) <= report["cards"][0]["room_bytes"]
    human = run_cli("plan", "--together", "coder,vision", "--vram", "16")
    assert human.exit_code == 1 and "does not fit" in human.stdout
    config = write(tmp_path / "c.yaml", "models: {coder: {share: 0.3}, vision: {share: 0.3}}\n")
    fixed = json.loads(run_cli("plan", "--config", str(config), "--together", "coder,vision", "--vram", "16",
                               "--json").stdout)
    assert [p["utilization"] for p in fixed["placements"]] == [0.3, 0.3]
    assert {p["basis"] for p in fixed["placements"]} == {"share"}
    assert run_cli("plan", "--together", "coder", "--vram", "16").exit_code == 2   # one model is not a set


def test_placement_on_two_cards_and_named_gpus() -> None:
    from animllm_cli.gpu.planner import Card, place

    cards = [Card(0, 16 * GIB, 4 * GIB), Card(1, 16 * GIB, 10 * GIB)]
    need = lambda card: 6 * GIB  # noqa: E731
    assert place(need, 1, cards, None) == (1,)              # the GPU with room
    assert place(need, 1, cards, [0]) is None              # named: only there, and it has no room
    assert place(need, 2, cards, None) is None             # tensor parallel needs two with room
    cards[0].room_bytes = 7 * GIB
    assert place(need, 2, cards, None) == (0, 1)


def test_pool_keys_are_checked_with_the_key_that_breaks_them(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "pool: {preload: [nosuch]}\n"
                                        "models: {coder: {gpus: [0, 1], tensor_parallel_size: 4}}\n")
    result = run_cli("models", "--config", str(config))
    assert result.exit_code == 2
    assert "pool.preload: item 1: no model or alias named 'nosuch'" in result.stderr
    assert "models.coder.gpus: names 2 GPU(s) but tensor_parallel_size is 4" in result.stderr


def test_a_remote_model_is_listed_never_planned_nor_shared(tmp_path: Path) -> None:
    from animllm_cli.gpu.planner import card_shares

    config = write(tmp_path / "c.yaml", "models: {far: {upstream: {urls: 'http://10.0.0.5:8000'}}}\n")
    loaded = load_config(config)
    assert "far" not in card_shares(loaded, 48 * GIB) and "coder" in card_shares(loaded, 48 * GIB)
    report = plan_models(loaded, loaded.model_names(), 48 * GIB, "test")
    assert [r.model for r in report.remote] == ["far"] and report.remote[0].urls == ["http://10.0.0.5:8000"]
    assert "far" not in {p.model for p in report.models} | set(report.shares)
    assert report.to_json()["remote"] == [{"model": "far", "urls": ["http://10.0.0.5:8000"]}]

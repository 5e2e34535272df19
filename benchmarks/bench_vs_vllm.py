"""`animllm bench` beside vLLM's own serving benchmark (`vllm bench serve`'s code in the
installed build), against the same vLLM server (CPU build, a tiny model), the same
workload, in one run, rounds alternating which goes first. Both run as they do for a
user: each its own process, from its command line.

Workloads:
- completions-random: each tool's random prompts of --input-len tokens (vLLM's random
  dataset; animllm's token-id prompts) to /v1/completions;
- completions-file, chat-file: one ShareGPT file of text prompts that both read (vLLM's
  `sharegpt` dataset, unshuffled; `animllm bench --prompts`), to /v1/completions and to
  /v1/chat/completions: the same requests, byte for byte but for the JSON spelling.
  (ShareGPT rather than JSONL: vLLM reads JSONL with pandas, which its CPU build lacks.)

Per workload: the median over rounds of each tool's median TTFT, median TPOT and output
tokens/s, and animllm/vLLM ratios (target: each within 5 %, 0.95 to 1.05). Then, per
tool, what tells noise from a difference: each round's median TTFT, the mean, and how
many requests were nearer the fastest TTFT than the slowest. At a concurrency that
fills the server, requests sent together are prefilled in groups (one alone, then the
rest), so TTFT is bimodal and its median jumps between the two modes from one round to
the next, for either tool: --save keeps every request's TTFT, in sending order, to see it.

Usage: .venv/bin/python benchmarks/bench_vs_vllm.py [--requests 40] [--concurrency 4] [--rounds 4]
       [--workloads completions-random,completions-file,chat-file]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from animllm_cli.config import load_config  # noqa: E402
from animllm_cli.demo.tiny_models import TinySpec, build_tiny_model  # noqa: E402
from animllm_cli.engine.supervisor import launch  # noqa: E402

WORKLOADS = ("completions-random", "completions-file", "chat-file")

VLLM_BENCH = """
import json, sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
result = main(parser.parse_args(sys.argv[1:]))
keys = ("median_ttft_ms", "median_tpot_ms", "output_throughput", "completed", "total_input_tokens", "ttfts", "start_times")
print("RESULT " + json.dumps({k: result[k] for k in keys}))
"""


def vllm_argv(workload: str, url: str, tokenizer: Path, prompts: Path, args: argparse.Namespace, seed: int) -> list[str]:
    endpoint, source = workload.split("-")
    argv = ["--backend", "vllm" if endpoint == "completions" else "openai-chat", "--base-url", url,
            "--endpoint", "/v1/completions" if endpoint == "completions" else "/v1/chat/completions",
            "--model", "tiny-a", "--tokenizer", str(tokenizer), "--num-prompts", str(args.requests),
            "--max-concurrency", str(args.concurrency), "--ignore-eos", "--num-warmups", "2",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--request-rate", "inf", "--seed", str(seed),
            "--save-detailed"]  # keeps per-request ttfts and start_times in the result
    if source == "random":
        return argv + ["--dataset-name", "random", "--random-input-len", str(args.input_len),
                       "--random-output-len", str(args.output_len)]
    return argv + ["--dataset-name", "sharegpt", "--dataset-path", str(prompts), "--sharegpt-output-len",
                   str(args.output_len), "--disable-shuffle"]


def animllm_argv(workload: str, url: str, config: Path, prompts: Path, args: argparse.Namespace, seed: int) -> list[str]:
    endpoint, source = workload.split("-")
    argv = ["--config", str(config), "bench", "tiny-a", "--url", url, "--concurrency", str(args.concurrency),
            "-n", str(args.requests), "--output-len", str(args.output_len), "--warmup", "2", "--seed", str(seed),
            "--endpoint", endpoint, "--json", "--samples"]
    if source == "random":
        return argv + ["--input-len", str(args.input_len)]
    return argv + ["--prompts", str(prompts)]


def run_vllm(argv: list[str], key: str, cwd: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", VLLM_BENCH, *argv], capture_output=True, text=True, timeout=900,
                          cwd=cwd, env={**os.environ, "OPENAI_API_KEY": key})
    line = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"vLLM's benchmark failed:\n{done.stderr[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    order = sorted(range(len(result["ttfts"])), key=lambda i: result["start_times"][i])
    return {**result, "ttfts_by_start": [result["ttfts"][i] * 1000 for i in order]}


def run_animllm(argv: list[str], key: str) -> dict:
    env = {**os.environ, "ANIMLLM_API_KEY": key, "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-m", "animllm_cli", *argv], capture_output=True, text=True, timeout=900,
                          env=env)
    if done.returncode != 0:
        raise SystemExit(f"animllm bench failed ({done.returncode}):\n{done.stderr[-3000:]}")
    level = json.loads(done.stdout)["levels"][0]
    summary, samples = level["summary"], sorted(level["samples"], key=lambda s: s["start"])
    return {"median_ttft_ms": summary["ttft_ms"]["median"], "median_tpot_ms": summary["tpot_ms"]["median"],
            "output_throughput": summary["output_throughput"], "completed": summary["completed"],
            "total_input_tokens": summary["input_tokens"],
            "ttfts_by_start": [s["ttft"] * 1000 for s in samples if s["ttft"] is not None]}


def write_prompts(tokenizer_dir: Path, path: Path, count: int, input_len: int) -> None:
    """ShareGPT conversations whose first turn is a text prompt of about --input-len tokens
    (random token ids of the model, decoded, as vLLM's random dataset makes them)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rng = random.Random(7)
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(tokenizer.vocab_size) if i not in special]
    conversations = [{"conversations": [{"from": "human", "value": tokenizer.decode(rng.choices(ids, k=input_len))},
                                        {"from": "gpt", "value": "unused: the output length is given"}]}
                     for _ in range(count)]
    path.write_text(json.dumps(conversations))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    # TTFT at a saturating concurrency on 2 cores varies by 20 % from one run to the next:
    # several rounds, each tool first in half of them.
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--save", type=Path, help="also write every run's figures and per-request TTFTs here (JSON)")
    args = parser.parse_args()
    workloads = [w for w in args.workloads.split(",") if w]
    # Wider and deeper than the test models (which make a token in ~1 ms): on 2 cores a model
    # that fast lets vLLM's API server fall behind and deliver whole answers in one burst,
    # for any client, which is no basis for comparing two clients.
    spec = TinySpec("bench-model", seed=3, layers=8, hidden=512, heads=8, kv_heads=2, intermediate=1536)
    tiny = build_tiny_model(REPO / ".pytest_cache" / "animllm-tiny-models" / spec.name, spec)
    results: dict[str, dict[str, list[dict]]] = {w: {"vllm": [], "animllm": []} for w in workloads}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prompts = work / "prompts.json"
        # Every run of either tool sends the same file: the server's prefix cache is off
        # (see the profile below), or whichever ran second would find its prompts cached.
        write_prompts(tiny, prompts, args.requests + 2, args.input_len)
        config = work / "c.yaml"
        config.write_text(f"""inherit_defaults: false
env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
profiles: {{p: {{gpu_memory_utilization: 0.3, max_model_len: 1024, max_num_seqs: 32, enforce_eager: true, dtype: bfloat16,
                enable_prefix_caching: false}}}}
models: {{tiny-a: {{source: {tiny}, profile: p}}}}
""")
        engine = launch(load_config(config), "tiny-a", log_dir=work)
        engine.start()
        key = engine.command.api_key
        try:
            for workload in workloads:
                for round_index in range(args.rounds):
                    order = ["vllm", "animllm"] if round_index % 2 == 0 else ["animllm", "vllm"]
                    for name in order:
                        if name == "vllm":
                            run = run_vllm(vllm_argv(workload, engine.base_url, tiny, prompts, args, round_index), key, work)
                        else:
                            run = run_animllm(animllm_argv(workload, engine.base_url, config, prompts, args, round_index), key)
                        results[workload][name].append(run)
                        print(f"  {workload} round {round_index + 1} {name}: TTFT {run['median_ttft_ms']:.1f} ms, "
                              f"TPOT {run['median_tpot_ms']:.2f} ms, {run['output_throughput']:.1f} tok/s", flush=True)
        finally:
            engine.stop()
    if args.save:
        args.save.write_text(json.dumps(results))
    report(results, spec, args)


def report(results: dict[str, dict[str, list[dict]]], spec: TinySpec, args: argparse.Namespace) -> None:
    print(f"\nsame server (vLLM CPU build, {spec.name}: {spec.layers} layers, hidden {spec.hidden}), "
          f"{args.input_len}-token prompts, {args.output_len} tokens out (ignore_eos), {args.requests} requests "
          f"at concurrency {args.concurrency}, {args.rounds} rounds alternating; {os.cpu_count()} CPUs")
    print(f"{'workload':<20} {'metric':<26} {'vllm bench':>11} {'animllm bench':>14} {'ratio':>7}  within 5 %")
    for workload, runs in results.items():
        for key, label in (("median_ttft_ms", "TTFT median (ms)"), ("median_tpot_ms", "TPOT median (ms)"),
                           ("output_throughput", "output throughput (tok/s)")):
            theirs = statistics.median(r[key] for r in runs["vllm"])
            ours = statistics.median(r[key] for r in runs["animllm"])
            ratio = ours / theirs if theirs else float("nan")
            print(f"{workload:<20} {label:<26} {theirs:>11.2f} {ours:>14.2f} {ratio:>7.3f}  "
                  f"{'yes' if abs(ratio - 1) <= 0.05 else 'NO'}")
        for name, tool in runs.items():
            ttfts = [t for r in tool for t in r["ttfts_by_start"]]
            middle = (min(ttfts) + max(ttfts)) / 2
            print(f"{'':<20} {name:>8}: TTFT median per round {[round(r['median_ttft_ms']) for r in tool]} ms, "
                  f"mean {statistics.fmean(ttfts):.0f} ms, {sum(t < middle for t in ttfts)}/{len(ttfts)} nearer "
                  f"{min(ttfts):.0f} than {max(ttfts):.0f} ms; input tokens {[r['total_input_tokens'] for r in tool]}")

if __name__ == "__main__":
    main()

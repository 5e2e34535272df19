"""`animllm bench` beside vLLM's own serving benchmark (`vllm.benchmarks.serve` of the
installed build), against the same tiny-model vLLM server, with the same workload, in one
run, alternating: ratios of median TTFT, median TPOT and output throughput (target: each
within 5 %, i.e. a ratio between 0.95 and 1.05).

Usage: .venv/bin/python benchmarks/bench_vs_vllm.py [--requests 40] [--concurrency 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from animllm_cli.bench import loadgen  # noqa: E402
from animllm_cli.bench.metrics import summarize  # noqa: E402
from animllm_cli.config import load_config  # noqa: E402
from animllm_cli.demo.tiny_models import TinySpec, build_tiny_model  # noqa: E402
from animllm_cli.engine.supervisor import launch  # noqa: E402

VLLM_BENCH = """
import json, sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
result = main(parser.parse_args(sys.argv[1:]))
print("RESULT " + json.dumps({k: result[k] for k in ("median_ttft_ms", "median_tpot_ms", "output_throughput",
                                                       "completed", "total_input_tokens")}))
"""


def run_vllm_bench(url: str, model: str, tokenizer: Path, args: argparse.Namespace, result_dir: Path, seed: int) -> dict:
    argv = ["--backend", "vllm", "--base-url", url, "--model", model, "--tokenizer", str(tokenizer),
            "--dataset-name", "random", "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len), "--num-prompts", str(args.requests),
            "--max-concurrency", str(args.concurrency), "--ignore-eos", "--num-warmups", "2",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--request-rate", "inf", "--seed", str(seed)]
    done = subprocess.run([sys.executable, "-c", VLLM_BENCH, *argv], capture_output=True, text=True, timeout=900,
                          cwd=result_dir)
    line = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"vLLM's benchmark failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


async def run_ours(url: str, model: str, args: argparse.Namespace, round_seed: int) -> dict:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        prompt = loadgen.prompts(await loadgen.vocabulary_sample(session, url, model), args.input_len, seed=round_seed)
        for index in range(2):
            await loadgen.one_request(session, url, loadgen.request_body(model, prompt(10_000 + index), args.output_len))
        samples, duration = await loadgen.run_level(
            session, url, lambda i: loadgen.request_body(model, prompt(i), args.output_len), args.requests,
            concurrency=args.concurrency)
    summary = summarize(samples, duration)
    return {"median_ttft_ms": summary.ttft_ms.median, "median_tpot_ms": summary.tpot_ms.median,
            "output_throughput": summary.output_throughput, "completed": summary.completed,
            "total_input_tokens": summary.input_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    # Wider and deeper than the test models (which make a token in ~1 ms): on 2 cores a model
    # that fast lets vLLM's API server fall behind and deliver whole answers in one burst,
    # for any client, which is no basis for comparing two clients.
    spec = TinySpec("bench-model", seed=3, layers=8, hidden=512, heads=8, kv_heads=2, intermediate=1536)
    tiny = build_tiny_model(REPO / ".pytest_cache" / "animllm-tiny-models" / spec.name, spec)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "c.yaml"
        config.write_text(f"""inherit_defaults: false
env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
profiles: {{p: {{gpu_memory_utilization: 0.3, max_model_len: 1024, max_num_seqs: 32, enforce_eager: true, dtype: bfloat16}}}}
models: {{tiny-a: {{source: {tiny}, profile: p}}}}
""")
        engine = launch(load_config(config), "tiny-a", log_dir=Path(tmp))
        engine.start()
        try:
            results = {"animllm": [], "vllm": []}
            for round_index in range(args.rounds):
                order = ["vllm", "animllm"] if round_index % 2 == 0 else ["animllm", "vllm"]
                for name in order:
                    if name == "vllm":
                        results[name].append(run_vllm_bench(engine.base_url, "tiny-a", tiny, args, Path(tmp), round_index))
                    else:
                        results[name].append(asyncio.run(run_ours(engine.base_url, "tiny-a", args, round_index)))
        finally:
            engine.stop()
    print(f"same server (vLLM CPU build, {spec.name}: {spec.layers} layers, hidden {spec.hidden}), random {args.input_len}-token prompts, {args.output_len} tokens out "
          f"(ignore_eos), {args.requests} requests at concurrency {args.concurrency}, {args.rounds} rounds alternating")
    print(f"{'metric':<26} {'vllm bench':>12} {'animllm bench':>14} {'ratio':>7}  within 5 %")
    for key, label in (("median_ttft_ms", "TTFT median (ms)"), ("median_tpot_ms", "TPOT median (ms)"),
                       ("output_throughput", "output throughput (tok/s)")):
        theirs = statistics.median(r[key] for r in results["vllm"])
        ours = statistics.median(r[key] for r in results["animllm"])
        ratio = ours / theirs if theirs else float("nan")
        print(f"{label:<26} {theirs:>12.2f} {ours:>14.2f} {ratio:>7.3f}  {'yes' if abs(ratio - 1) <= 0.05 else 'NO'}")
    print("completed per run:", {k: [r["completed"] for r in v] for k, v in results.items()})
    print("input tokens per run:", {k: [r["total_input_tokens"] for r in v] for k, v in results.items()})


if __name__ == "__main__":
    main()

"""The engine pool: the mixed two- and three-model loads of benchmarks/mixed_load.py, with
the pool limited to one engine (`pool.max_engines: 1`, every other model evicts the
loaded one) and with two resident (a declared 16 GiB card, `share: 0.45` each: two fit, a
third evicts the least recently used), side by side in one run, through `animllm serve`
over real tiny models (vLLM's CPU build). Both run the batch scheduler.

Per scenario and pool it prints loads (switches, including loads beside a resident model),
p50 / p99 end-to-end latency per model, the longest wait, answers from the wrong model and
failures. Each scenario starts with tiny-a loaded alone.

Usage: .venv/bin/python benchmarks/pool.py [--requests 6] [--rate 0.5] [--seed 1]
       [--scenarios interleaved,poisson-2,poisson-3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mixed_load  # noqa: E402  (the same gateway, clients and arrivals)

POOLS = {
    "one engine": {"extra": "pool: {max_engines: 1}", "model_keys": ""},
    "two resident": {"extra": "gpu: {vram_gib: 16}", "model_keys": ", share: 0.45"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6, help="requests per model in the Poisson scenarios")
    parser.add_argument("--rate", type=float, default=0.5, help="Poisson arrivals per second, per model")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenarios", default="interleaved,poisson-2,poisson-3")
    args = parser.parse_args()

    from animllm_cli.demo.tiny_models import build_tiny_models

    models = build_tiny_models(mixed_load.REPO / ".pytest_cache" / "animllm-tiny-models")
    root = Path(tempfile.mkdtemp(prefix="animllm-pool-"))
    scenarios = args.scenarios.split(",")
    results: dict[tuple[str, str], dict] = {}
    for pool, keys in POOLS.items():
        gateway = mixed_load.Gateway(root, "batch", models, name=pool.replace(" ", "-"), **keys)
        gateway.start()
        try:
            for scenario in scenarios:
                plan = mixed_load.arrivals(scenario, args.requests, args.rate, args.seed)
                started = time.monotonic()
                answers, switches = mixed_load.run_scenario(gateway, plan)
                results[scenario, pool] = mixed_load.summary(answers, switches)
                print(f"{pool:<12} {scenario:<12} done in {time.monotonic() - started:.0f}s: {switches}", flush=True)
        finally:
            gateway.stop()

    print(f"\nengine pool: {args.requests} requests per model at {args.rate}/s per model (Poisson, seed {args.seed})")
    print(f"{'scenario':<12} {'pool':<12} {'reqs':>4} {'loads':>5} {'longest wait':>12} {'wrong':>5} {'failed':>6}"
          f"  e2e p50 / p99 per model (s)")
    for scenario in scenarios:
        for pool in POOLS:
            r = results[scenario, pool]
            per_model = "  ".join(f"{m[5:]}: {p50:.1f}/{p99:.1f}" for m, (p50, p99) in r["per_model"].items())
            print(f"{scenario:<12} {pool:<12} {r['requests']:>4} {r['switches']:>5.0f} {r['longest_wait']:>11.1f}s "
                  f"{r['wrong']:>5} {r['failed']:>6}  {per_model}")
        one, two = results[scenario, "one engine"], results[scenario, "two resident"]
        ratio = one["switches"] / two["switches"] if two["switches"] else float("inf")
        print(f"{'':<12} one/two: loads {ratio:.1f}x, p99 {one['p99_all'] / two['p99_all']:.2f}x; "
              f"two resident: load reasons {two['reasons']}")
    clean = all(r["wrong"] == 0 and r["failed"] == 0 for r in results.values())
    print(f"\nno answer from the wrong model, no failure: {'met' if clean else 'MISSED'}")


if __name__ == "__main__":
    main()

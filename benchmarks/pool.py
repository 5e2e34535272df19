"""The engine pool: the mixed two- and three-model loads of benchmarks/mixed_load.py, with
the pool limited to one engine (`pool.max_engines: 1`, every other model evicts the
loaded one) and with two resident (a declared 16 GiB card, `share: 0.45` each: two fit, a
third evicts the least recently used), side by side in one run, through `animllm serve`
over real tiny models (vLLM's CPU build). Both run the batch scheduler.

Per scenario and pool it prints loads (switches, including loads beside a resident model),
p50 / p99 end-to-end latency per model, the longest wait, answers from the wrong model and
failures. Each scenario starts with tiny-a loaded alone.

Sleep mode (`--part sleep`): the CPU build cannot sleep, so this part runs the same mixed
loads through an in-process gateway over fake engines (tests/fakes/fake_vllm.py) on a
declared 16 GiB CUDA card that holds one model awake at a time, with three evictions side
by side: stop (sleep: off; every load is a cold start), level 1 and level 2 (host RAM too
small for the weights). Each model has been used once before the scenarios (the studio's
day: the models have all run), and each scenario starts with tiny-a awake and the others
evicted as the eviction does it (asleep, or stopped). The fake's delays are vLLM's published figures where there are
any (vLLM blog, 2025-10-26, A100, vLLM 0.11, Phi-3-vision: level-1 wake 0.82 s, level-2
wake 2.58 s); the cold start is `--cold-s` (20 s: the seed's 10-30 s per switch on the
studio box) and a sleep `--sleep-s` (1 s: the blog gives no sleep time, "hibernate in
seconds"). These are a model of the GPU, not a measurement of one: real figures remain
to be taken on a card (scripts/gpu_check.sh).

Usage: .venv/bin/python benchmarks/pool.py [--requests 6] [--rate 0.5] [--seed 1]
       [--scenarios interleaved,poisson-2,poisson-3] [--part resident|sleep|all]
       [--cold-s 20] [--sleep-s 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the fake engine and NVML (sleep part)

import httpx  # noqa: E402
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
    parser.add_argument("--part", choices=("resident", "sleep", "all"), default="all")
    parser.add_argument("--cold-s", type=float, default=20.0, help="the fake engine's cold start (sleep part)")
    parser.add_argument("--sleep-s", type=float, default=1.0, help="the fake engine's sleep (sleep part)")
    args = parser.parse_args()
    if args.part in ("resident", "all"):
        resident(args)
    if args.part in ("sleep", "all"):
        sleep_mode(args)


# ------------------------------------------------------------------ sleep mode, on fake engines
PUBLISHED_WAKE_S = {1: 0.82, 2: 2.58}   # vLLM blog 2025-10-26: A100, Phi-3-vision, vLLM 0.11
EVICTIONS = {"stop": {"sleep": "off", "host_gib": 64}, "level 1": {"sleep": "auto", "host_gib": 64},
             "level 2": {"sleep": "auto", "host_gib": 2}}


class InProcessGateway:
    """The gateway of tests/support/gateways.py, with the interface mixed_load's scenarios use."""

    def __init__(self, running) -> None:
        self.running, self.url = running, running.url

    def switches(self) -> dict[str, float]:
        return mixed_load.Gateway.switches(self)

    def reports(self, since: float) -> list:
        return [r for r in self.running.gateway.pool.switches
                if r.to_model and r.outcome == "ok" and (r.finished_at or 0) >= since and r.reason != "admin"]


def start_fake(root: Path, eviction: dict, wake_s: float, args) -> InProcessGateway:
    from animllm_cli.engine.python_env import PythonEnv
    from animllm_cli.units import GIB
    from tests.fakes.nvml import FakeGpu, FakeNvml
    from tests.support.gateways import start_gateway

    root.mkdir(parents=True)
    (root / "state").mkdir()
    sources = {"tiny-a": "Qwen/Qwen2.5-7B-Instruct-AWQ", "tiny-b": "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ",
               "tiny-c": "Qwen/Qwen2.5-VL-7B-Instruct-AWQ"}
    models = "\n".join(f"  {name}: {{source: {source}, profile: p, share: 0.75, sleep: {eviction['sleep']}}}"
                       for name, source in sources.items())
    config = root / "animllm.yaml"
    config.write_text(f"""inherit_defaults: false
engine: {{module: tests.fakes.fake_vllm, start_timeout_s: {args.cold_s + 60}, stall_timeout_s: {args.cold_s + 30}}}
env: {{PYTHONPATH: "{mixed_load.REPO}", FAKE_VLLM_MODE: slow, FAKE_VLLM_AFTER: "{args.cold_s}",
      FAKE_VLLM_SLEEP_S: "{args.sleep_s}", FAKE_VLLM_WAKE_S: "{wake_s}", FAKE_VLLM_CHUNK_DELAY: "0.02",
      FAKE_VLLM_STATE_DIR: "{root / 'state'}"}}
limits: {{queue_timeout_s: 3600, vram_threshold: 0.95}}
scheduler: {{policy: batch, max_wait_s: {mixed_load.MAX_WAIT_S}}}
profiles: {{p: {{max_model_len: 1024, concurrency: 4}}}}
default_model: tiny-a
models:
{models}
""")
    cuda = PythonEnv("/opt/vllm/bin/python", "3.12.3", {"vllm": "0.10.2", "torch": "2.7.0"})
    running = start_gateway(root, config, model="tiny-a", nvml=FakeNvml([FakeGpu(engine_bytes="share")]),
                            engine_env=cuda, host_available=lambda: int(eviction["host_gib"] * GIB))
    return InProcessGateway(running)


def sleep_mode(args) -> None:
    import statistics

    root = Path(tempfile.mkdtemp(prefix="animllm-sleep-"))
    os.environ["ANIMLLM_STATE_DIR"] = str(root / "state")  # its state file and logs, not the user's
    scenarios = args.scenarios.split(",")
    results: dict[tuple[str, str], dict] = {}
    for eviction, keys in EVICTIONS.items():
        wake_s = PUBLISHED_WAKE_S[2 if eviction == "level 2" else 1]
        gateway = start_fake(root / eviction.replace(" ", "-"), keys, wake_s, args)
        try:
            with httpx.Client(base_url=gateway.url, timeout=3600) as http:  # each model used once: the day's state
                for model in ("tiny-c", "tiny-b"):
                    http.post("/admin/switch", json={"model": model})
            for scenario in scenarios:
                plan = mixed_load.arrivals(scenario, args.requests, args.rate, args.seed)
                started, since = time.monotonic(), time.time()
                answers, switches = mixed_load.run_scenario(gateway, plan, sleep=True)
                reports = gateway.reports(since)
                result = mixed_load.summary(answers, switches)
                totals = [r.total_s for r in reports]
                result.update(switch_median=statistics.median(totals) if totals else float("nan"),
                              switch_max=max(totals, default=float("nan")),
                              kinds={k: sum(r.load_kind == k for r in reports) for k in ("wake", "cold")})
                results[scenario, eviction] = result
                print(f"{eviction:<8} {scenario:<12} done in {time.monotonic() - started:.0f}s: {result['kinds']}",
                      flush=True)
        finally:
            gateway.running.stop()

    print(f"\nsleep mode (fake engines: cold start {args.cold_s:g} s, sleep {args.sleep_s:g} s, wake "
          f"{PUBLISHED_WAKE_S[1]} s at level 1 / {PUBLISHED_WAKE_S[2]} s at level 2; {args.requests} requests per "
          f"model at {args.rate}/s, seed {args.seed})")
    print(f"{'scenario':<12} {'eviction':<8} {'reqs':>4} {'loads':>5} {'wake/cold':>9} {'switch s med/max':>16} "
          f"{'p99 e2e':>8} {'wrong':>5} {'failed':>6}")
    for scenario in scenarios:
        for eviction in EVICTIONS:
            r = results[scenario, eviction]
            print(f"{scenario:<12} {eviction:<8} {r['requests']:>4} {r['switches']:>5.0f} "
                  f"{r['kinds']['wake']:>4}/{r['kinds']['cold']:<4} {r['switch_median']:>7.2f} / {r['switch_max']:<6.2f} "
                  f"{r['p99_all']:>7.1f}s {r['wrong']:>5} {r['failed']:>6}")
        stop, one, two = (results[scenario, e] for e in EVICTIONS)
        print(f"{'':<12} stop/level 1: switch median {stop['switch_median'] / one['switch_median']:.1f}x, "
              f"p99 {stop['p99_all'] / one['p99_all']:.2f}x; stop/level 2: switch median "
              f"{stop['switch_median'] / two['switch_median']:.1f}x, p99 {stop['p99_all'] / two['p99_all']:.2f}x")
    clean = all(r["wrong"] == 0 and r["failed"] == 0 for r in results.values())
    print(f"\nno answer from the wrong model, no failure: {'met' if clean else 'MISSED'}")
    print("These are fake engines timed with published figures: real GPU figures remain to be taken.")


# ------------------------------------------------------------------ resident engines, on real tiny models
def resident(args) -> None:
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

"""Mixed load: what switches cost when several models are asked at once, under the first
version's strict arrival order (`scheduler.policy: fifo`) and the batch rule (`batch`),
side by side in one run, through `animllm serve` over real tiny models (vLLM's CPU build).

Scenarios, each started with tiny-a loaded:
- interleaved: 8 concurrent chat requests, tiny-a and tiny-b in alternating arrival order
  (the case the issue reported: 7 switches for 8 requests);
- poisson-2 / poisson-3: Poisson arrivals at `--rate` requests/s per model, `--requests`
  per model, over two and three models, half of them streamed.

Per scenario and policy it prints switches (and per 100 requests), p50 / p99 end-to-end
latency per model, the longest wait of any request (time to its first byte: the first
chunk of a stream, the whole answer otherwise, which for these short answers is the
wait), answers from the wrong model (must be 0) and failures. Switch counts exclude the
`animllm switch` that puts tiny-a back before each scenario.

Targets (issue #13): interleaved at most 2 switches with batch; Poisson at least 5x fewer
switches than fifo and a lower p99; no request waiting longer than `scheduler.max_wait_s`
plus the longest switch measured.

Usage: .venv/bin/python benchmarks/mixed_load.py [--requests 6] [--rate 0.5] [--seed 1]
       [--scenarios interleaved,poisson-2,poisson-3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MAX_WAIT_S = 60.0
CONFIG = """inherit_defaults: false
{extra}
env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
engine: {{stall_timeout_s: 300}}
limits: {{queue_timeout_s: 3600}}
scheduler: {{policy: {policy}, max_wait_s: {max_wait}}}
profiles:
  tiny: {{gpu_memory_utilization: 0.3, max_model_len: 512, max_num_seqs: 8, enforce_eager: true,
          dtype: bfloat16, concurrency: 4}}
default_model: tiny-a
models:
{models}
"""


@dataclass
class Answer:
    model: str
    stream: bool
    status: int = 0
    answered_by: str | None = None
    arrived: float = 0.0
    first_byte: float | None = None
    ended: float | None = None

    @property
    def e2e(self) -> float:
        return self.ended - self.arrived

    @property
    def wait(self) -> float:
        return self.first_byte - self.arrived


class Gateway:
    """`animllm serve` in its own session, with its own config and state directory."""

    def __init__(self, root: Path, policy: str, models: dict[str, Path], *, name: str | None = None,
                 extra: str = "", model_keys: str = "") -> None:
        """`extra`: more top-level config (pool, gpu); `model_keys`: more keys on every model."""
        from animllm_cli.engine.supervisor import free_port

        self.root = root / (name or policy)
        self.root.mkdir(parents=True)
        listed = "\n".join(f"  {name}: {{source: {path}, profile: tiny{model_keys}}}" for name, path in models.items())
        (self.root / "animllm.yaml").write_text(CONFIG.format(policy=policy, max_wait=MAX_WAIT_S, models=listed,
                                                              extra=extra))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.switch_records: dict[float, float] = {}  # finished_at -> total_s, from /admin/status
        self._watching = threading.Event()

    def env(self) -> dict[str, str]:
        return {**os.environ, "ANIMLLM_CONFIG": str(self.root / "animllm.yaml"),
                "ANIMLLM_STATE_DIR": str(self.root / "state"), "NO_COLOR": "1"}

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "animllm_cli", *args], capture_output=True, text=True,
                              env=self.env(), timeout=3600)

    def start(self) -> None:
        started = self.cli("serve", "tiny-a", "--port", str(self.port), "--detach")
        if started.returncode != 0:
            raise SystemExit(f"serve failed: {started.stderr}")
        self._watching.set()
        threading.Thread(target=self._watch_switches, daemon=True).start()

    def stop(self) -> None:
        self._watching.clear()
        self.cli("stop")

    def _watch_switches(self) -> None:
        """Every switch's duration, from the status' last switch (polled: each lasts seconds)."""
        while self._watching.is_set():
            try:
                last = httpx.get(f"{self.url}/admin/status", timeout=10).json()["engine"]["last_switch"]
                if last and last.get("finished_at") and last.get("outcome") == "ok":
                    self.switch_records[last["finished_at"]] = last["total_s"]
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.5)

    def switches(self) -> dict[str, float]:
        """animllm_switches_total (outcome ok) by reason, `animllm switch`es and unloads left out."""
        counts: dict[str, float] = {}
        for line in httpx.get(f"{self.url}/metrics", timeout=30).text.splitlines():
            if line.startswith("animllm_switches_total{") and 'outcome="ok"' in line:
                reason = re.search(r'reason="([^"]*)"', line).group(1)
                if reason not in ("admin", "cold", "unload"):
                    counts[reason] = counts.get(reason, 0) + float(line.split()[-1])
        return counts


def ask(url: str, answer: Answer, text: str) -> None:
    body = {"model": answer.model, "stream": answer.stream, "max_tokens": 16, "ignore_eos": True,
            "messages": [{"role": "user", "content": text}]}
    answer.arrived = time.monotonic()
    with httpx.Client(timeout=httpx.Timeout(3600, connect=10)) as http:
        with http.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
            answer.status = reply.status_code
            models = set()
            if answer.stream:
                for line in reply.iter_lines():
                    answer.first_byte = answer.first_byte or time.monotonic()
                    if line.startswith("data: {"):
                        models.add(json.loads(line[6:]).get("model"))
            else:
                models.add(json.loads(reply.read()).get("model"))
    answer.ended = time.monotonic()
    answer.first_byte = answer.first_byte or answer.ended
    answer.answered_by = models.pop() if len(models) == 1 else f"{sorted(models, key=str)}"


def arrivals(scenario: str, requests: int, rate: float, seed: int) -> list[tuple[float, str, bool]]:
    """(seconds from start, model, stream) for every request of the scenario."""
    if scenario == "interleaved":
        return [(i * 0.01, ("tiny-a", "tiny-b")[i % 2], i % 4 >= 2) for i in range(8)]
    rng = random.Random(seed)
    models = ("tiny-a", "tiny-b", "tiny-c")[: int(scenario[-1])]
    plan = []
    for model in models:
        at = 0.0
        for _ in range(requests):
            at += rng.expovariate(rate)
            plan.append((at, model, rng.random() < 0.5))
    return sorted(plan)


def reset(gateway: Gateway, *, sleep: bool = False) -> None:
    """Every scenario starts from the same place: tiny-a loaded, nothing else (a sleeper
    stopped too; with `sleep`, the others asleep where they can). Through the admin API,
    so that an in-process gateway works the same."""
    with httpx.Client(base_url=gateway.url, timeout=httpx.Timeout(3600, connect=10)) as http:
        switched = http.post("/admin/switch", json={"model": "tiny-a"})
        if switched.status_code != 200:
            raise SystemExit(f"switch failed: {switched.text}")
        for engine in http.get("/admin/status").json()["engines"]:
            if engine["model"] != "tiny-a":
                http.post("/admin/unload", json={"model": engine["model"], "sleep": sleep})


def run_scenario(gateway: Gateway, plan: list[tuple[float, str, bool]], *,
                 sleep: bool = False) -> tuple[list[Answer], dict[str, float]]:
    reset(gateway, sleep=sleep)
    before = gateway.switches()
    answers, threads, start = [], [], time.monotonic()
    for index, (at, model, stream) in enumerate(plan):
        time.sleep(max(0.0, start + at - time.monotonic()))
        answers.append(Answer(model, stream))
        threads.append(threading.Thread(target=ask, args=(gateway.url, answers[-1], f"request {index}")))
        threads[-1].start()
    for thread in threads:
        thread.join()
    after = gateway.switches()
    return answers, {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summary(answers: list[Answer], switches: dict[str, float]) -> dict:
    ok = [a for a in answers if a.status == 200 and a.ended is not None]  # a client that died counts as failed
    per_model = {}
    for model in sorted({a.model for a in answers}):
        e2e = [a.e2e for a in ok if a.model == model]
        per_model[model] = (percentile(e2e, 50), percentile(e2e, 99)) if e2e else (float("nan"),) * 2
    total = sum(switches.values())
    return {"requests": len(answers), "switches": total, "per_100": 100 * total / len(answers),
            "reasons": switches, "per_model": per_model,
            "p99_all": percentile([a.e2e for a in ok], 99) if ok else float("nan"),
            "longest_wait": max((a.wait for a in ok), default=float("nan")),
            "wrong": sum(1 for a in ok if a.answered_by != a.model), "failed": len(answers) - len(ok)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6, help="requests per model in the Poisson scenarios")
    parser.add_argument("--rate", type=float, default=0.5, help="Poisson arrivals per second, per model")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenarios", default="interleaved,poisson-2,poisson-3",
                        help="comma-separated, from interleaved, poisson-2, poisson-3")
    args = parser.parse_args()

    from animllm_cli.demo.tiny_models import build_tiny_models

    models = build_tiny_models(REPO / ".pytest_cache" / "animllm-tiny-models")
    root = Path(tempfile.mkdtemp(prefix="animllm-mixed-"))
    scenarios = args.scenarios.split(",")
    results: dict[tuple[str, str], dict] = {}
    longest_switch: dict[str, float] = {}
    for policy in ("fifo", "batch"):
        gateway = Gateway(root, policy, models)
        gateway.start()
        try:
            for scenario in scenarios:
                plan = arrivals(scenario, args.requests, args.rate, args.seed)
                started = time.monotonic()
                answers, switches = run_scenario(gateway, plan)
                results[scenario, policy] = summary(answers, switches)
                print(f"{policy:<5} {scenario:<12} done in {time.monotonic() - started:.0f}s: {switches}", flush=True)
        finally:
            gateway.stop()
        longest_switch[policy] = max(gateway.switch_records.values(), default=float("nan"))

    print(f"\nmixed load: {args.requests} requests per model at {args.rate}/s per model (Poisson, seed {args.seed}); "
          f"max_wait_s {MAX_WAIT_S:g}; longest switch: fifo {longest_switch['fifo']:.1f}s, "
          f"batch {longest_switch['batch']:.1f}s")
    print(f"{'scenario':<12} {'policy':<6} {'reqs':>4} {'switches':>8} {'/100':>6} {'longest wait':>12} "
          f"{'wrong':>5} {'failed':>6}  e2e p50 / p99 per model (s)")
    for scenario in scenarios:
        for policy in ("fifo", "batch"):
            r = results[scenario, policy]
            models_text = "  ".join(f"{m[5:]}: {p50:.1f}/{p99:.1f}" for m, (p50, p99) in r["per_model"].items())
            print(f"{scenario:<12} {policy:<6} {r['requests']:>4} {r['switches']:>8.0f} {r['per_100']:>6.1f} "
                  f"{r['longest_wait']:>11.1f}s {r['wrong']:>5} {r['failed']:>6}  {models_text}")
        fifo, batch = results[scenario, "fifo"], results[scenario, "batch"]
        ratio = fifo["switches"] / batch["switches"] if batch["switches"] else float("inf")
        print(f"{'':<12} fifo/batch: switches {ratio:.1f}x, p99 {fifo['p99_all'] / batch['p99_all']:.2f}x; "
              f"batch switch reasons {batch['reasons']}")

    print("\ntargets:")
    bound = MAX_WAIT_S + longest_switch["batch"]
    checks = []
    if "interleaved" in scenarios:
        checks.append(("interleaved: batch at most 2 switches", results["interleaved", "batch"]["switches"] <= 2))
    for scenario in [s for s in scenarios if s.startswith("poisson")]:
        fifo, batch = results[scenario, "fifo"], results[scenario, "batch"]
        checks += [(f"{scenario}: at least 5x fewer switches", fifo["switches"] >= 5 * max(batch["switches"], 1e-9)),
                   (f"{scenario}: lower p99", batch["p99_all"] < fifo["p99_all"])]
    checks += [(f"batch: no wait over max_wait_s + longest switch ({bound:.1f}s)",
                all(results[s, "batch"]["longest_wait"] <= bound for s in scenarios)),
               ("no answer from the wrong model, no failure",
                all(r["wrong"] == 0 and r["failed"] == 0 for r in results.values()))]
    for name, met in checks:
        print(f"  {name}: {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()

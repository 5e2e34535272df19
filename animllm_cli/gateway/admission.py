"""Whether to take a new request, after the seed's rule "reject new requests at 95 %",
measured where it means something.

vLLM reserves gpu_memory_utilization x total VRAM when it starts and does not grow per
request, so NVML's "used" sits near that fraction (plus the desktop) while idle. What
can still run a card out of memory is memory *outside* that reservation: other
processes, and the engine's own growth since it became ready. So:

- a request for the loaded model is refused when its KV cache is at least `threshold`
  full (vLLM's own `kv_cache_usage_perc`), or when memory outside the engine's reservation
  has taken `threshold` of what the reservation left free on the card;
- a request for another model is refused only when other processes alone hold
  `threshold` of the card: the switch frees the loaded engine's memory first, so a large
  loaded model is never a reason to refuse it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from animllm_cli.gpu.nvml import Gpu, GpuReport
from animllm_cli.units import GIB

KV_USAGE = re.compile(rb"^vllm:(?:kv_cache_usage_perc|gpu_cache_usage_perc)\{[^}]*\} ([0-9.eE+-]+)", re.MULTILINE)


def kv_usage(metrics_text: bytes) -> float | None:
    """The fullest KV cache in an engine's Prometheus metrics (0..1), or None."""
    values = [float(v) for v in KV_USAGE.findall(metrics_text)]
    return max(values) if values else None


def engine_bytes(gpu: Gpu, pids: set[int]) -> int:
    return sum(p.used_bytes or 0 for p in gpu.processes if p.pid in pids)


@dataclass
class Verdict:
    loaded: str | None = None       # why a request for the loaded model is refused now
    others: str | None = None       # why a request for any other model is refused now

    def reason(self, for_loaded_model: bool) -> str | None:
        return self.loaded if for_loaded_model else self.others


@dataclass
class Admission:
    threshold: float
    at_ready: dict[int, int] = field(default_factory=dict)  # GPU index -> the engine's bytes when it became ready

    def engine_ready(self, report: GpuReport, pids: set[int], measured: int | None = None) -> None:
        """Remember the engine's reservation, per GPU, as NVML shows it at ready. Where the
        driver names no process of the engine (containers see host pids, Windows/WSL show
        no per-process memory), `measured` (free memory before the start minus after,
        on GPU 0) stands in for it."""
        self.at_ready = {gpu.index: engine_bytes(gpu, pids) for gpu in report.gpus}
        if measured and self.at_ready and not any(self.at_ready.values()):
            self.at_ready[report.gpus[0].index] = max(0, measured)

    def engine_gone(self) -> None:
        self.at_ready = {}

    def judge(self, report: GpuReport, pids: set[int], kv: float | None) -> Verdict:
        verdict = Verdict()
        if kv is not None and kv >= self.threshold:
            verdict.loaded = f"the engine's KV cache is {kv:.0%} full (threshold {self.threshold:.0%})"
        if pids and not self.at_ready:
            return verdict  # the engine's reservation is not measured yet: no NVML verdict for now
        for gpu in report.gpus:
            if not gpu.total_bytes:
                continue
            reserved = self.at_ready.get(gpu.index, 0) if pids else 0
            listed = any(p.pid in pids for p in gpu.processes)
            now = engine_bytes(gpu, pids) if listed else reserved  # unlisted: assume it holds its reservation
            others = max(0, gpu.used_bytes - now)
            outside = others + max(0, now - reserved)
            headroom = gpu.total_bytes - reserved
            if others >= self.threshold * gpu.total_bytes:  # nothing can run: the same reason for every model
                verdict.others = (f"GPU {gpu.index}: other processes hold {others / gpu.total_bytes:.0%} "
                                  f"of its memory (threshold {self.threshold:.0%})")
                verdict.loaded = verdict.loaded or verdict.others
            elif verdict.loaded is None and headroom > 0 and outside >= self.threshold * headroom:
                verdict.loaded = (f"GPU {gpu.index}: memory outside the engine's reservation is "
                                  f"{outside / GIB:.2f} GiB of the {headroom / GIB:.2f} GiB it left free "
                                  f"(threshold {self.threshold:.0%})")
        return verdict

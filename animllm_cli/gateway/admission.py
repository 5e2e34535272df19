"""Whether to take a new request, after the seed's rule "reject new requests at 95 %",
measured where it means something.

vLLM reserves gpu_memory_utilization x total VRAM when it starts and does not grow per
request, so NVML's "used" sits near that fraction (plus the desktop) while idle. What
can still run a card out of memory is memory *outside* that reservation: other
processes, and the engine's own growth since it became ready. So:

- a request for a resident model is refused when its KV cache is at least `threshold`
  full (vLLM's own `kv_cache_usage_perc`), or when memory outside the engines'
  reservations has taken `threshold` of what the reservations left free on the card;
- a request for another model is refused only when other processes alone hold
  `threshold` of the card: a switch frees the evicted engines' memory first, so large
  resident models are never a reason to refuse it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from animllm_cli.engine.metric_names import KV_CACHE_METRICS
from animllm_cli.gpu.nvml import Gpu, GpuReport
from animllm_cli.units import gib

KV_USAGE = re.compile(rb"^(?:" + b"|".join(re.escape(name.encode()) for name in KV_CACHE_METRICS)
                      + rb")\{[^}]*\} ([0-9.eE+-]+)", re.MULTILINE)


def kv_usage(metrics_text: bytes) -> float | None:
    """The fullest KV cache in an engine's Prometheus metrics (0..1), or None."""
    values = [float(v) for v in KV_USAGE.findall(metrics_text)]
    return max(values) if values else None


def engine_bytes(gpu: Gpu, pids: set[int]) -> int:
    return sum(p.used_bytes or 0 for p in gpu.processes if p.pid in pids)


@dataclass
class Verdict:
    residents: str | None = None    # why a request for any resident model is refused now
    others: str | None = None       # why a request for any other model is refused now
    kv: dict[str, str] = field(default_factory=dict)  # resident model -> its KV cache is full

    def reason(self, model: str, resident: bool) -> str | None:
        return (self.kv.get(model) or self.residents) if resident else self.others

    @property
    def summary(self) -> str | None:
        return self.residents or next(iter(self.kv.values()), None) or self.others


@dataclass
class Admission:
    threshold: float

    def judge(self, report: GpuReport, pids: set[int], reserved: dict[int, int] | None,
              kv: dict[str, float]) -> Verdict:
        """`pids`: every process of the ready engines; `reserved`: GPU index -> what they
        held when they became ready (None: one is not measured yet: no NVML verdict for
        now); `kv`: each ready engine's KV cache usage."""
        verdict = Verdict(kv={model: f"the engine's KV cache is {usage:.0%} full (threshold {self.threshold:.0%})"
                              for model, usage in kv.items() if usage >= self.threshold})
        if pids and reserved is None:
            return verdict
        reserved = reserved or {}
        for gpu in report.gpus:
            if not gpu.total_bytes:
                continue
            held = reserved.get(gpu.index, 0) if pids else 0
            listed = any(p.pid in pids for p in gpu.processes)
            now = engine_bytes(gpu, pids) if listed else held  # unlisted: assume they hold their reservations
            others = max(0, gpu.used_bytes - now)
            outside = others + max(0, now - held)
            headroom = gpu.total_bytes - held
            if others >= self.threshold * gpu.total_bytes:  # nothing can run: the same reason for every model
                verdict.others = (f"GPU {gpu.index}: other processes hold {others / gpu.total_bytes:.0%} "
                                  f"of its memory (threshold {self.threshold:.0%})")
                verdict.residents = verdict.residents or verdict.others
            elif verdict.residents is None and headroom > 0 and outside >= self.threshold * headroom:
                verdict.residents = (f"GPU {gpu.index}: memory outside the engines' reservations is "
                                     f"{gib(outside, 2)} of the {gib(headroom, 2)} they left free "
                                     f"(threshold {self.threshold:.0%})")
        return verdict

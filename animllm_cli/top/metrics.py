"""The engines' own figures, out of the gateway's /metrics (its own metrics, then every
engine's, merged): per model, the requests vLLM runs and queues, its KV cache use and
the tokens it has generated so far."""

from __future__ import annotations

from dataclasses import dataclass

from animllm_cli.engine.metric_names import GENERATED, KV_CACHE_METRICS, RUNNING, WAITING


@dataclass
class EngineMetrics:
    """None: the engine exposes no such metric (another server, an older vLLM)."""
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None      # 0..1
    generation_tokens: float | None = None   # since the engine started


def parse(text: str) -> dict[str, EngineMetrics]:
    """model name (vLLM's `model_name` label) -> its figures. An exposition that does not
    parse gives none: top shows '-' rather than stop."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, EngineMetrics] = {}
    try:
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    except ValueError:
        return {}
    for sample in samples:
        model = sample.labels.get("model_name")
        if model is None:
            continue
        figures = found.setdefault(model, EngineMetrics())
        # An engine may report per engine core (data parallel): counts add up, the KV
        # cache is as full as its fullest part (as admission reads it).
        if sample.name == RUNNING:
            figures.requests_running = (figures.requests_running or 0) + sample.value
        elif sample.name == WAITING:
            figures.requests_waiting = (figures.requests_waiting or 0) + sample.value
        elif sample.name in KV_CACHE_METRICS:
            figures.kv_cache_usage = max(figures.kv_cache_usage or 0.0, sample.value)
        elif sample.name == GENERATED:
            figures.generation_tokens = (figures.generation_tokens or 0) + sample.value
    return found


def tokens_per_s(before: EngineMetrics | None, after: EngineMetrics | None, seconds: float) -> float | None:
    """Generation tokens/s between two scrapes `seconds` apart; None without both counters
    or when the counter went down (the engine restarted: the rate is unknown this time)."""
    if before is None or after is None or seconds <= 0:
        return None
    if before.generation_tokens is None or after.generation_tokens is None:
        return None
    generated = after.generation_tokens - before.generation_tokens
    return round(generated / seconds, 1) if generated >= 0 else None

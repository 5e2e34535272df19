"""Prometheus metrics of the gateway, in a registry of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from animllm_cli.gateway.resident import Resident


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("animllm_requests", "Requests by model and outcome", ["model", "outcome"],
                                registry=self.registry)
        self._requests: dict[tuple[str, str], Any] = {}  # count(): never cleared, as `requests` never is
        self.queue_depth = Gauge("animllm_queue_depth", "Requests waiting", registry=self.registry)
        self.in_flight = Gauge("animllm_in_flight", "Requests being answered", registry=self.registry)
        # reason: why the loaded model gave up the card; chosen_by: why this model went next
        # (gateway/scheduler.py, Decision).
        self.switches = Counter("animllm_switches", "Model switches by target, outcome, reason and choice",
                                ["model", "outcome", "reason", "chosen_by"], registry=self.registry)
        self.switch_seconds = Histogram("animllm_switch_seconds", "Switch duration, stop to ready",
                                        buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600), registry=self.registry)
        self.rejections = Counter("animllm_rejections", "Requests refused before reaching an engine", ["reason"],
                                  registry=self.registry)
        # Sampled from NVML every admission interval, per engine process (gateway/pool.py).
        self.engine_vram = Gauge("animllm_engine_vram_bytes", "VRAM each resident engine holds now",
                                 ["model"], registry=self.registry)
        self.engine_vram_peak = Gauge("animllm_engine_vram_peak_bytes", "The most VRAM each resident engine has held "
                                      "since it became ready", ["model"], registry=self.registry)
        self.failovers = Counter("animllm_upstream_failovers", "Requests for a remote model sent on to another of "
                                 "its URLs after one failed", ["model"], registry=self.registry)
        self.upstream_up = Gauge("animllm_upstream_up", "1 while a remote model's URL is in rotation",
                                 ["model", "url"], registry=self.registry)
        # kind: how it was found dead (wire.DeathKind); a restart is a switch of reason "restart".
        self.engine_deaths = Counter("animllm_engine_deaths", "Engines that died after ready, by how",
                                     ["model", "kind"], registry=self.registry)
        # Per client (`clients:`, by name: never a key), where clients are configured (gateway/accounting.py).
        self.client_requests = Counter("animllm_client_requests", "Requests by client, model and outcome",
                                       ["client", "model", "outcome"], registry=self.registry)
        self.client_tokens = Counter("animllm_client_tokens", "Tokens by client, model and direction (in, out), "
                                     "as the engine counted them", ["client", "model", "direction"],
                                     registry=self.registry)
        self.client_switch_wait = Counter("animllm_client_switch_wait_seconds", "Seconds a client's requests waited "
                                          "for switches", ["client", "model"], registry=self.registry)

    def count(self, model: str, outcome: str) -> None:
        """One request of `model` ended so: `requests`, its labelled child looked up once (the
        relay counts every request; prometheus_client's labels() is most of that cost)."""
        child = self._requests.get((model, outcome))
        if child is None:
            child = self._requests[(model, outcome)] = self.requests.labels(model, outcome)
        child.inc()

    def record_vram(self, residents: Iterable[Resident]) -> None:
        """Each resident's measured VRAM and peak; gone ones drop out."""
        self.engine_vram.clear()
        self.engine_vram_peak.clear()
        for resident in residents:
            now = resident.vram_now()
            if now:
                self.engine_vram.labels(resident.model).set(sum(now.values()))
                self.engine_vram_peak.labels(resident.model).set(sum(resident.peak_bytes.values()))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def merged_exposition(texts: list[bytes]) -> bytes:
    """Several engines' own /metrics as one valid exposition: each metric family once,
    with every engine's samples (their `model_name` labels tell them apart). Appended as
    they come, the same family's HELP and TYPE would repeat, which strict parsers refuse."""
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Any] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode(errors="replace")):
            if family.name in families:
                families[family.name].samples.extend(family.samples)
            else:
                families[family.name] = family

    class Engines:
        def collect(self) -> Iterable[Any]:
            return families.values()

    registry = CollectorRegistry()
    registry.register(Engines())
    return generate_latest(registry)

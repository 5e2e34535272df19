"""The results of one `animllm bench` run, typed, with their one JSON form: the keys the
docs/json.md documents for `bench --json` (schema_version 1)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from animllm_cli.bench.metrics import LevelSummary, Sample

SCHEMA_VERSION = 1
# JSON has no infinity (Python would write `Infinity`, which other readers refuse): an
# infinite burstiness, request rate or SLO is written as the string "inf", and read back.
INFINITE_KEYS = frozenset({"burstiness", "request_rate", "ttft_ms", "tpot_ms", "e2el_ms"})


def standard_json(data: Any) -> Any:
    """`data` with every infinite number written as the string "inf" (or "-inf")."""
    if isinstance(data, float) and math.isinf(data):
        return repr(data)
    if isinstance(data, dict):
        return {key: standard_json(value) for key, value in data.items()}
    if isinstance(data, list):
        return [standard_json(value) for value in data]
    return data


def read_infinities(data: Any) -> Any:
    """Back from `standard_json`: "inf" is a number again where a number is meant."""
    if isinstance(data, dict):
        return {key: float(value) if key in INFINITE_KEYS and value in ("inf", "-inf") else read_infinities(value)
                for key, value in data.items()}
    if isinstance(data, list):
        return [read_infinities(value) for value in data]
    return data


def level_label(concurrency: int | None, request_rate: float | None, ramp_up: str | None = None,
                burstiness: float = 1.0) -> str:
    if concurrency:
        return f"concurrency {concurrency}"
    arrivals = f"ramp-up {ramp_up}" if ramp_up else f"{request_rate:g} req/s"
    return arrivals if burstiness == 1 else f"{arrivals}, burstiness {burstiness:g}"


@dataclass
class LevelResult:
    """One level: a fixed concurrency, or arrivals at a request rate (Poisson, or gamma
    with a burstiness other than 1), or a ramp-up from one rate to another."""
    concurrency: int | None
    request_rate: float | None
    summary: LevelSummary
    samples: list[Sample] | None = None  # None: left out of the JSON (bench without --samples)
    vram_peak_bytes: int | None = None  # the most VRAM this machine's GPUs held during the level (NVML)
    burstiness: float = 1.0
    ramp_up: str | None = None          # e.g. "linear 1→10 req/s"

    @property
    def label(self) -> str:
        return level_label(self.concurrency, self.request_rate, self.ramp_up, self.burstiness)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"concurrency": self.concurrency, "request_rate": self.request_rate,
                                "burstiness": self.burstiness, "ramp_up": self.ramp_up,
                                "summary": asdict(self.summary), "vram_peak_bytes": self.vram_peak_bytes}
        if self.samples is not None:
            data["samples"] = [sample.to_json() for sample in self.samples]
        return data


@dataclass
class Spread:
    median: float
    max: float


@dataclass
class SwitchSummary:
    """Median and max seconds of each part of a switch; None where no switch reported it
    (VRAM release without a GPU, a wake where every load was cold). `load_s`: cold starts;
    `sleep_s`/`wake_s`: vLLM sleep mode's evictions and loads."""
    stop_s: Spread | None
    vram_release_s: Spread | None
    load_s: Spread | None
    total_s: Spread | None
    first_token_s: Spread | None
    sleep_s: Spread | None = None
    wake_s: Spread | None = None
    first_token_after_wake_s: Spread | None = None
    first_token_after_cold_s: Spread | None = None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass
class SwitchRun:
    count: int
    # The gateway's switch reports as it sent them, each with first_token_s added: their
    # shape is the gateway's (`switch --json`), passed through, not redefined here.
    switches: list[dict[str, Any]]
    summary: SwitchSummary
    wakes: int = 0                    # switches whose model woke from sleep
    cold_loads: int = 0               # switches whose model started afresh


@dataclass
class CheckRow:
    metric: str
    value: float
    target: str
    ok: bool


@dataclass
class BenchResult:
    url: str
    model: str
    input_len: int
    output_len: int
    endpoint: str = "/v1/completions"
    prompts: str = "random"             # or the --prompts file
    goodput_slo: dict[str, float | None] | None = None  # with --goodput (or the profile's slo)
    levels: list[LevelResult] = field(default_factory=list)
    switch: SwitchRun | None = None     # with --switch
    check: list[CheckRow] | None = None  # with --check
    schema_version: int = SCHEMA_VERSION

    def without_samples(self) -> BenchResult:
        return replace(self, levels=[replace(level, samples=None) for level in self.levels])

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema_version": self.schema_version, "url": self.url, "model": self.model,
                                "input_len": self.input_len, "output_len": self.output_len,
                                "endpoint": self.endpoint, "prompts": self.prompts, "goodput_slo": self.goodput_slo,
                                "levels": [level.to_json() for level in self.levels]}
        if self.switch is not None:
            data["switch"] = asdict(self.switch)
        if self.check is not None:
            data["check"] = [asdict(row) for row in self.check]
        return standard_json(data)

"""`bench-mix coder:3,vision:1`: several models asked at once through the gateway, the
load animllm exists for. Arrivals at one rate (Poisson, gamma or a ramp), each request's
model drawn by weight; per model the vLLM metrics of its requests, which include any wait
for a switch; and the switches the gateway made meanwhile (`GET /admin/switches`), their
phases, and how much of the run's wall time had a switch under way."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import aiohttp

from animllm_cli.bench import loadgen
from animllm_cli.bench.arrivals import RampUp, send_offsets
from animllm_cli.bench.metrics import LevelSummary, Sample, summarize
from animllm_cli.bench.results import SCHEMA_VERSION, CheckRow, SwitchRun, standard_json
from animllm_cli.bench.runner import session
from animllm_cli.bench.slo import Slo
from animllm_cli.bench.switching import summarize as summarize_switches
from animllm_cli.bench.workload import Workload
from animllm_cli.client.openai import ServerNotRunning
from animllm_cli.errors import AnimllmError, UsageError
from animllm_cli.output import Output


def parse_mix(text: str, resolve: Callable[[str], str]) -> list[tuple[str, float]]:
    """`coder:3,vision:1` (a model without a weight weighs 1); names resolved as the
    gateway resolves them (task words, aliases)."""
    shares: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, weight = part.partition(":")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise UsageError(f"bench-mix {text!r}: weight {weight!r} of '{name}' is not a number",
                             hint="e.g. bench-mix coder:3,vision:1") from None
        if value <= 0:
            raise UsageError(f"bench-mix {text!r}: the weight of '{name}' must be above 0")
        model = resolve(name.strip())
        if model in shares:
            raise UsageError(f"bench-mix {text!r}: '{name}' is '{model}', named twice")
        shares[model] = value
    if len(shares) < 2:
        raise UsageError(f"bench-mix {text!r}: name at least two models, e.g. coder:3,vision:1",
                         hint="one model's load is plain `animllm bench MODEL --request-rate R`")
    return list(shares.items())


@dataclass
class MixPlan:
    url: str
    shares: list[tuple[str, float]]
    requests: int
    workload: Workload
    request_rate: float | None
    burstiness: float = 1.0
    ramp_up: RampUp | None = None
    slos: dict[str, Slo] = field(default_factory=dict)   # per model: --goodput, else its profile's
    api_key: str | None = None
    seed: int = 0
    prompts_label: str = "random"


@dataclass
class MixModel:
    model: str
    weight: float
    summary: LevelSummary              # its requests, over the run's wall time
    behind_switch: int                 # requests in flight when a switch into this model ended: they waited
    switches_in: int                   # switches that loaded or woke it during the run
    switches_failed: int = 0           # switches into it that failed: no load, and no switch time
    goodput_slo: dict[str, float | None] | None = None


@dataclass
class MixResult:
    url: str
    request_rate: float | None
    burstiness: float
    ramp_up: str | None
    requests: int
    input_len: int
    output_len: int
    endpoint: str
    prompts: str
    seed: int
    duration_s: float
    models: list[MixModel]
    overall: LevelSummary
    switch: SwitchRun | None            # the gateway's reports as sent; None: the server keeps none
    switching_s: float | None           # wall time with a switch under way (overlaps counted once)
    switching_share: float | None       # of the run's wall time
    switches_lost: int = 0              # made during the run, but no longer in the gateway's history
    switch_error: str | None = None     # why the history could not be read after the run (the run stands)
    samples: list[Sample] | None = None
    check: list[CheckRow] | None = None
    kind: str = "mix"
    schema_version: int = SCHEMA_VERSION

    def without_samples(self) -> MixResult:
        return replace(self, samples=None)

    def to_json(self) -> dict[str, Any]:
        data = {f: getattr(self, f) for f in ("schema_version", "kind", "url", "request_rate", "burstiness", "ramp_up",
                                              "requests", "input_len", "output_len", "endpoint", "prompts", "seed",
                                              "duration_s", "switching_s", "switching_share", "switches_lost",
                                              "switch_error")}
        data["models"] = [asdict(m) for m in self.models]
        data["overall"] = asdict(self.overall)
        data["switch"] = asdict(self.switch) if self.switch else None
        if self.samples is not None:
            data["samples"] = [s.to_json() for s in self.samples]
        if self.check is not None:
            data["check"] = [asdict(row) for row in self.check]
        return standard_json(data)


async def run_mix(plan: MixPlan, out: Output) -> MixResult:
    rng = random.Random(f"{plan.seed}:models")  # not the arrivals' stream: a model's draw must not set its gap
    names, weights = zip(*plan.shares)
    chosen = rng.choices(names, weights=weights, k=plan.requests)
    async with session(plan.url, plan.api_key) as http:
        recorded_before = await _recorded(http, plan.url)
        requests = await plan.workload.requests(http, plan.url, chosen, start=0, seed=plan.seed)
        offsets = send_offsets(len(requests), plan.request_rate, burstiness=plan.burstiness, ramp_up=plan.ramp_up,
                               seed=plan.seed)
        wall_start, clock_start = time.time(), time.perf_counter()
        with out.progress() as progress:
            task = progress.add_task(f"mix of {len(names)} models", total=len(requests))
            samples, duration = await loadgen.run_level(http, plan.url, requests, offsets=offsets,
                                                        on_done=lambda _s: progress.advance(task))
        history, unread = await _history_after(http, plan.url, since=wall_start)
    to_wall = lambda clock: wall_start + clock - clock_start  # noqa: E731
    switches = [s for s in history["switches"] if s.get("to_model")] if history else None
    window = (wall_start, wall_start + duration)
    models = [_per_model(name, weight, samples, switches, duration, plan.slos.get(name), to_wall)
              for name, weight in plan.shares]
    switching = _union_s([_interval(s) for s in switches], window) if switches is not None else None
    lost = max(0, history["recorded"] - recorded_before - len(history["switches"])) if history else 0
    if unread is not None:
        out.warn(f"the switches could not be read after the run ({unread}): the latencies stand, "
                 "the switches are not reported")
    elif switches is None:
        out.warn(f"{plan.url} keeps no switch history (/admin/switches): switches are not reported")
    workload = plan.workload
    return MixResult(url=plan.url, request_rate=plan.request_rate, burstiness=plan.burstiness,
                     ramp_up=plan.ramp_up.describe() if plan.ramp_up else None, requests=plan.requests,
                     input_len=workload.input_len, output_len=workload.output_len, endpoint=workload.endpoint,
                     prompts=plan.prompts_label, seed=plan.seed, duration_s=duration, models=models,
                     overall=summarize(samples, duration), switch=_switch_run(switches), switching_s=switching,
                     switching_share=None if switching is None else switching / max(duration, 1e-9),
                     switches_lost=lost, switch_error=unread, samples=samples)


def _per_model(name: str, weight: float, samples: list[Sample], switches: list[dict] | None, duration: float,
               slo: Slo | None, to_wall: Callable[[float], float]) -> MixModel:
    mine = [s for s in samples if s.model == name]
    into = [s for s in switches or [] if s["to_model"] == name and s.get("finished_at")]
    ends = [s["finished_at"] for s in into]  # a failed switch kept its requests waiting too

    def waited(sample: Sample) -> bool:
        sent = to_wall(sample.start)
        answered = to_wall(sample.start + (sample.ttft if sample.ttft is not None else sample.latency))
        return any(sent <= end <= answered for end in ends)

    return MixModel(model=name, weight=weight, summary=summarize(mine, duration, slo),
                    behind_switch=sum(waited(s) for s in mine), switches_in=sum(s.get("outcome") == "ok" for s in into),
                    switches_failed=sum(s.get("outcome") == "failed" for s in into),
                    goodput_slo=asdict(slo) if slo else None)


def _switch_run(switches: list[dict[str, Any]] | None) -> SwitchRun | None:
    """Every report, as the gateway sent it; the spreads and kinds of the switches that
    happened (a failed one loaded nothing: its seconds are no switch time)."""
    if switches is None:
        return None
    done = [s for s in switches if s.get("outcome") == "ok"]
    return SwitchRun(count=len(switches), switches=switches, summary=summarize_switches(done),
                     wakes=sum(s.get("load_kind") == "wake" for s in done),
                     cold_loads=sum(s.get("load_kind") == "cold" for s in done))


def _interval(report: dict[str, Any]) -> tuple[float, float]:
    end = report.get("finished_at") or 0.0
    return end - (report.get("total_s") or 0.0), end


def _union_s(intervals: list[tuple[float, float]], window: tuple[float, float]) -> float:
    """Seconds of `window` covered by any interval (switches of a pool may overlap)."""
    clipped = sorted((max(a, window[0]), min(b, window[1])) for a, b in intervals)
    total, reach = 0.0, window[0]
    for start, end in clipped:
        if end > max(start, reach):
            total += end - max(start, reach)
            reach = end
    return total


async def _recorded(http: aiohttp.ClientSession, url: str) -> int:
    history = await _history(http, url, since=time.time() + 86400)  # none kept that late: just the count
    return history["recorded"] if history else 0


async def _history_after(http: aiohttp.ClientSession, url: str, since: float) -> tuple[dict[str, Any] | None, str | None]:
    """The switch history after the run, and why it could not be read (None: it was): the
    run is measured by then, and a failed read must not throw it away."""
    try:
        return await _history(http, url, since), None
    except AnimllmError as exc:
        return None, exc.message


async def _history(http: aiohttp.ClientSession, url: str, since: float) -> dict[str, Any] | None:
    try:
        async with http.get(f"{url}/admin/switches", params={"since": repr(since)}) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise AnimllmError(f"{url}/admin/switches answered {resp.status}: {(await resp.text())[:200]}")
            return await resp.json()
    except aiohttp.ClientConnectionError:
        raise ServerNotRunning(url) from None
    except (aiohttp.ContentTypeError, ValueError):
        raise AnimllmError(f"{url}/admin/switches answered something other than a switch history") from None

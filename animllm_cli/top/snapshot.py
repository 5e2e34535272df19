"""One reading of the box (a `Scrape`), and what two readings `--interval` apart say (a
`Snapshot`): the GPUs from NVML here, the engines, queues and switches from the running
gateway. Nothing here prints or raises for a missing or silent gateway: it is a state
to show, as the GPUs are worth showing without one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from animllm_cli.top.metrics import EngineMetrics, parse, tokens_per_s

# Above the gateway's own bound on an engine's /metrics (ENGINE_PROBE_TIMEOUT_S, 2 s): a
# hung engine then costs only its own figures. The view never waits on it (view.py reads
# in a thread of its own), so a slow answer makes a figure older, never the screen stuck.
HTTP_TIMEOUT_S = 2.5


@dataclass
class GatewayInfo:
    url: str | None = None
    running: bool = False             # a gateway's state file names a live process
    reachable: bool = False           # and it answered /admin/status
    problem: str | None = None        # why not, in words
    hint: str | None = None
    pid: int | None = None
    uptime_s: float | None = None


@dataclass
class Scrape:
    at: float                         # monotonic, when the metrics were read
    taken_at: float                   # wall clock
    gpus: Any                         # nvml.GpuReport
    gateway: GatewayInfo
    status: Any = None                # StatusReport, when the gateway answered
    metrics: dict[str, EngineMetrics] = field(default_factory=dict)


class Reader:
    """Reads scrapes: NVML, then the gateway the state file names (found again each time,
    so a gateway started or stopped while top runs shows up as such)."""

    def __init__(self, key_env: str, *, nvml_module: Any = None) -> None:
        self.key_env = key_env
        self.nvml_module = nvml_module
        self._client: Any = None    # client.admin.AdminClient, for the gateway the state file names now

    def read(self) -> Scrape:
        from animllm_cli.gpu import nvml

        gpus = nvml.probe(self.nvml_module)
        try:
            gateway, status, metrics = self._read_gateway()
        except Exception as exc:  # a view that stops drawing is worse than a line saying why
            gateway, status, metrics = GatewayInfo(problem=f"reading the gateway failed: {exc!r}"), None, {}
        return Scrape(time.monotonic(), time.time(), gpus, gateway, status, metrics)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _read_gateway(self) -> tuple[GatewayInfo, Any, dict[str, EngineMetrics]]:
        from animllm_cli.client.admin import NotRunning
        from animllm_cli.errors import AnimllmError
        from animllm_cli.runfile import read_state

        try:
            state = read_state()
        except AnimllmError as exc:  # a state file not to trust: it names the problem
            return GatewayInfo(problem=exc.message, hint=exc.hint), None, {}
        if state is None:
            missing = NotRunning()
            return GatewayInfo(problem=missing.message, hint=missing.hint), None, {}
        return self._ask(state)

    def _ask(self, state: Any) -> tuple[GatewayInfo, Any, dict[str, EngineMetrics]]:
        from animllm_cli.client.admin import AdminClient, GatewayRefused, GatewayUnreachable

        info = GatewayInfo(url=state.url, running=True, pid=state.pid)
        if self._client is None or self._client.state.url != state.url:
            self.close()
            self._client = AdminClient(state, self.key_env, timeout=HTTP_TIMEOUT_S)
        try:
            status = self._client.status()
        except (GatewayRefused, GatewayUnreachable) as exc:
            info.problem, info.hint = exc.message, exc.hint
            return info, None, {}
        except ValueError as exc:  # an answer that is not a status report
            info.problem = f"the gateway at {state.url} answered something that is not a status: {exc}"
            return info, None, {}
        info.reachable, info.uptime_s = True, status.gateway.uptime_s
        try:
            metrics = parse(self._client.metrics())
        except (GatewayRefused, GatewayUnreachable):  # figures missing this time; the engines' states still show
            metrics = {}
        return info, status, metrics


@dataclass
class GpuRow:
    index: int
    name: str
    total_bytes: int
    used_bytes: int
    utilization_gpu_percent: int | None
    utilization_memory_percent: int | None


@dataclass
class EngineRow:
    model: str | None
    state: str
    phase: str | None                 # while starting: the engine's start-up phase (a load takes tens of seconds)
    gpus: list[int]
    vram_bytes: int | None            # NVML, per process (None: not measured)
    in_flight: int                    # the gateway's: requests sent to it
    waiting: int                      # the gateway's: requests queued for it
    requests_running: float | None    # vLLM's own, from its /metrics (None: not exposed)
    requests_waiting: float | None
    kv_cache_usage: float | None      # 0..1
    generation_tokens_per_s: float | None  # between the two scrapes


@dataclass
class Snapshot:
    taken_at: float
    interval_s: float                 # the time between the two scrapes it compares (0: one scrape)
    gateway: GatewayInfo
    gpus: list[GpuRow]
    gpu_error: str | None
    engines: list[EngineRow] = field(default_factory=list)
    remotes: list[Any] = field(default_factory=list)          # RemoteStatus
    queue_depth: int = 0
    in_flight: int = 0
    queues: dict[str, Any] = field(default_factory=dict)      # model -> ModelQueue
    clients: dict[str, Any] = field(default_factory=dict)     # client -> ClientQueue
    busy: str | None = None
    recent_switches: list[Any] = field(default_factory=list)  # SwitchReport, oldest first

    def to_json(self) -> dict:
        from dataclasses import asdict

        return {"schema_version": 1, "taken_at": round(self.taken_at, 3), "interval_s": round(self.interval_s, 3),
                "gateway": asdict(self.gateway), "gpus": [asdict(g) for g in self.gpus], "gpu_error": self.gpu_error,
                "engines": [asdict(e) for e in self.engines], "remotes": [r.to_json() for r in self.remotes],
                "queue_depth": self.queue_depth, "in_flight": self.in_flight,
                "queues": {m: q.to_json() for m, q in self.queues.items()}, "busy": self.busy,
                "clients": {c: q.to_json() for c, q in self.clients.items()},
                "recent_switches": [s.to_json() for s in self.recent_switches]}


def snapshot(current: Scrape, previous: Scrape | None = None) -> Snapshot:
    """What `current` shows, with tokens/s measured against `previous` (None: unknown)."""
    seconds = current.at - previous.at if previous is not None else 0.0
    gpus = [GpuRow(g.index, g.name, g.total_bytes, g.used_bytes, g.utilization_gpu_percent,
                   g.utilization_memory_percent) for g in current.gpus.gpus]
    shot = Snapshot(current.taken_at, seconds, current.gateway, gpus, current.gpus.error)
    status = current.status
    if status is None:
        return shot
    before = previous.metrics if previous is not None and previous.status is not None else {}
    shot.engines = [_engine_row(engine, current.metrics.get(engine.model or ""), before.get(engine.model or ""),
                                seconds) for engine in status.engines] + _downloading(status)
    shot.remotes, shot.queues, shot.busy, shot.clients = status.remotes, status.queues, status.busy, status.clients
    shot.queue_depth, shot.in_flight = status.queue_depth, status.in_flight
    shot.recent_switches = status.recent_switches
    return shot


def _engine_row(engine: Any, now: EngineMetrics | None, before: EngineMetrics | None, seconds: float) -> EngineRow:
    figures = now or EngineMetrics()
    phase = engine.phase if engine.state in ("starting", "waking") else None
    return EngineRow(engine.model, engine.state, phase, list(engine.gpus), engine.vram_bytes, engine.in_flight,
                     engine.waiting, figures.requests_running, figures.requests_waiting, figures.kv_cache_usage,
                     tokens_per_s(before, now, seconds))


def _downloading(status: Any) -> list[EngineRow]:
    """The model a switch downloads before its engine starts: no engine of its own yet, so
    a row from the single-slot view, its phase the download's."""
    engine = status.engine
    if engine.switching_to is None or engine.model != engine.switching_to or \
            any(e.model == engine.model for e in status.engines):
        return []
    queue = status.queues.get(engine.model)
    return [EngineRow(engine.model, engine.state, engine.phase, [], None, 0, queue.waiting if queue else 0,
                      None, None, None, None)]


def once(reader: Reader, interval_s: float) -> Snapshot:
    """`top --once`: two scrapes `interval_s` apart (tokens/s is a difference over time);
    one, when no gateway answers (there are no tokens to count)."""
    first = reader.read()
    if not first.gateway.reachable:
        return snapshot(first)
    time.sleep(max(0.0, interval_s - (time.monotonic() - first.at)))
    return snapshot(reader.read(), first)

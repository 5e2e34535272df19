"""The OpenAI-compatible gateway: one port for every configured model.

Requests are relayed as raw bytes (parsed once, for routing), streams chunk by chunk as
they arrive. The hot path avoids per-request work: a relay that parses every SSE event
costs measurably more latency (benchmarks/gateway_overhead.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from typing import Any, Awaitable, Callable

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from animllm_cli.config import LoadedConfig
from animllm_cli.gateway import guard
from animllm_cli.gateway.admission import Admission, Verdict, kv_usage
from animllm_cli.gateway.guard import Refused, error
from animllm_cli.gateway.manager import EngineManager
from animllm_cli.gateway.metrics import GatewayMetrics
from animllm_cli.gateway.scheduler import Decision, Lease, QueueFull, Scheduler, SwitchFailed
from animllm_cli.gateway.relay import Bounds, ClientGone, Deadlines, Expired, forward, race_disconnect
from animllm_cli.gateway.state import (GatewayProcess, GpuMemory, StatusReport, StopAnswer, SwitchReport,
                                       VramStatus)
from animllm_cli.gpu import nvml

PRIORITY_LIMIT = 1000
ADMIN_PRIORITY = PRIORITY_LIMIT + 1   # `animllm switch` and the first load go before any client
ENGINE_PROBE_TIMEOUT_S = 2.0          # the admission probe of the engine's /metrics

class Gateway:
    def __init__(self, loaded: LoadedConfig, *, api_key: str | None,
                 manager: EngineManager | None = None, nvml_module: object | None = None,
                 backoff_s: float = 30.0, admission_interval_s: float = 1.0) -> None:
        self.loaded = loaded
        self.catalogue = loaded.catalogue
        self.metrics = GatewayMetrics()
        self.api_key = api_key
        self.nvml_module = nvml_module
        self.manager = manager or EngineManager(loaded, nvml_module=nvml_module)
        self.manager.on_death = self._engine_died
        limits = loaded.config.limits
        self.bounds = Bounds.from_config(loaded.config)
        self.max_body_bytes = limits.max_body_bytes
        self.switch_on_demand = loaded.config.server.switch_on_demand
        # Each model's concurrency limit, worked out once: the scheduler asks on every decision.
        self._limits = {name: self._concurrency(name) for name in loaded.config.models}
        rule = loaded.config.scheduler
        self.scheduler = Scheduler(self._switch, self._limits.__getitem__, lambda: self.manager.model,
                                   queue_max=limits.queue_max, backoff_s=backoff_s, policy=rule.policy,
                                   max_wait_s=rule.max_wait_s, batch_factor=rule.batch_factor)
        self.admission = Admission(limits.vram_threshold)
        self.admission_interval_s = admission_interval_s
        self.verdict = Verdict()
        self.session: aiohttp.ClientSession | None = None
        self.started_at = time.time()
        self.shutdown_hook: Callable[[], None] | None = None
        self.failed: Exception | None = None   # the first model could not be loaded
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                                             auto_decompress=False, skip_auto_headers=("User-Agent",))
        self._tasks.append(asyncio.create_task(self._watch_admission()))

    async def close(self) -> Any:
        for task in self._tasks:
            task.cancel()
        stopped = await self.manager.shutdown()
        if self.session:
            await self.session.close()
        return stopped

    async def load(self, model: str) -> None:
        """Load `model` the way a request would, ahead of any: used at start and by /admin/switch."""
        lease = await self.scheduler.acquire(model, priority=ADMIN_PRIORITY, urgent=True)
        lease.release()

    def engine_headers(self) -> dict[str, str]:
        """What every request to the engine carries besides the body: the engine's own key."""
        engine = self.manager.engine
        return engine.headers if engine else {}

    # ------------------------------------------------------------------ scheduling glue
    def _concurrency(self, model: str) -> int:
        settings = self.loaded.model(model).settings
        return settings.get("concurrency") or settings.get("max_num_seqs") or 16

    async def _switch(self, decision: Decision) -> None:
        self.admission.engine_gone()
        labels = {"model": decision.model, "reason": decision.reason, "chosen_by": decision.chosen_by}
        try:
            report = await self.manager.switch(decision.model, reason=decision.reason, chosen_by=decision.chosen_by)
        except Exception:
            self.metrics.switches.labels(outcome="failed", **labels).inc()
            raise
        self.metrics.switches.labels(outcome="ok", **labels).inc()
        self.metrics.switch_seconds.observe(report.total_s or 0)
        engine = self.manager.engine
        if engine is not None:
            gpus, pids = await asyncio.to_thread(lambda: (nvml.probe(self.nvml_module), engine.pids()))
            before, after = report.vram_free_before, report.vram_free_after
            self.admission.engine_ready(gpus, pids, before - after if before is not None and after is not None else None)

    def _engine_died(self, model: str, reason: str) -> None:
        self.metrics.engine_deaths.labels(model).inc()
        self.admission.engine_gone()
        self.scheduler.engine_lost()

    # ------------------------------------------------------------------ admission
    async def _watch_admission(self) -> None:
        while True:
            try:
                self.verdict = await self._judge()
            except Exception:  # a probe failing must never take the gateway down
                self.verdict = Verdict()
            await asyncio.sleep(self.admission_interval_s)

    async def _judge(self) -> Verdict:
        engine = self.manager.engine if self.manager.model else None
        gpus, pids = await asyncio.to_thread(lambda: (nvml.probe(self.nvml_module), engine.pids() if engine else set()))
        kv = None
        if engine is not None and self.session:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):  # a hung engine: no KV verdict, no hang
                async with self.session.get(f"{engine.base_url}/metrics", headers=self.engine_headers(),
                                            timeout=aiohttp.ClientTimeout(total=ENGINE_PROBE_TIMEOUT_S)) as resp:
                    kv = kv_usage(await resp.read())
        return self.admission.judge(gpus, pids, kv)

    # ------------------------------------------------------------------ routing
    def resolve(self, requested: str) -> str | None:
        """The catalogue's rule, with the loaded model (or the one being loaded) first for
        a task: a task never costs a switch that a model on the card could spare."""
        return self.catalogue.find(requested, loaded=(self.manager.model, self.scheduler.switching_to))

    def not_found(self, requested: str) -> Refused:
        return Refused(error(404, f"model '{requested}' not found; available: {', '.join(self.catalogue.available())}",
                             param="model", code="model_not_found"), "unknown_model")


Handler = Callable[[Request, Gateway], Awaitable[Response]]


def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A route handler that runs only past the guard (key, Host, Origin, JSON bodies) and
    gets the Gateway; a Refused anywhere in it becomes its response and a metric."""
    async def route(request: Request) -> Response:
        gw: Gateway = request.app.state.gateway
        try:
            guard.check(request, gw.api_key)
            return await handler(request, gw)
        except Refused as refused:
            gw.metrics.rejections.labels(refused.label).inc()
            return refused.response
    route.__name__ = handler.__name__
    return route


def request_priority(request: Request, payload: dict[str, Any]) -> tuple[float, bool]:
    """From a `priority` field (removed: vLLM rejects it unless it runs priority
    scheduling) or the X-Priority header. A number within +-PRIORITY_LIMIT; anything else
    is a 400. Returns (priority, body changed)."""
    if "priority" in payload:
        value, changed, where = payload.pop("priority"), True, "the priority field"
    else:
        value, changed, where = request.headers.get("x-priority"), False, "X-Priority"
    if value is None:
        return 0.0, changed
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not -PRIORITY_LIMIT <= number <= PRIORITY_LIMIT:  # NaN fails both comparisons
        raise Refused(error(400, f"{where} must be a number from -{PRIORITY_LIMIT} to {PRIORITY_LIMIT}, "
                                 f"got {str(value)[:40]!r}", param="priority"), "bad_priority")
    return number, changed


@guarded
async def proxy(request: Request, gw: Gateway) -> Response:
    deadlines = Deadlines.from_arrival(gw.bounds)
    raw = await guard.read_body(request, gw.max_body_bytes)
    payload = guard.parse_object(raw)
    requested = payload.get("model")
    if not isinstance(requested, str) or not requested:
        raise Refused(error(400, "the request needs a `model` (a model name, alias or task)", param="model"),
                      "no_model")
    model = gw.resolve(requested)
    if model is None:
        raise gw.not_found(requested)
    priority, changed = request_priority(request, payload)
    if changed or requested not in gw.catalogue.served_names(model):
        payload["model"] = model
        raw = json.dumps(payload).encode()
    loaded = gw.manager.model
    if not gw.switch_on_demand and loaded not in (None, model):
        raise Refused(error(409, f"model '{model}' is not loaded ('{loaded}' is) and switch_on_demand is off",
                            "model_not_loaded", param="model", code="model_not_loaded"), "not_loaded")
    busy = gw.verdict.reason(for_loaded_model=model == loaded)
    if busy:
        raise Refused(error(503, f"busy: {busy}", "server_busy", retry_after=5), "pressure")
    lease = gw.scheduler.try_acquire(model)
    if lease is None:
        lease = await _queue(gw, request, model, priority, deadlines)
        if isinstance(lease, Response):
            return lease
    return await forward(gw, request, model, lease, raw, payload.get("stream") is True, deadlines)


async def _queue(gw: Gateway, request: Request, model: str, priority: float, deadlines: Deadlines) -> Lease | Response:
    """Wait for a slot on `model` (loading it if needed), within queue_timeout_s."""
    gw.metrics.queue_depth.set(gw.scheduler.depth + 1)
    try:
        waiting = deadlines.within(gw.scheduler.acquire(model, priority), gw.bounds.queue_s,
                                   f"no slot for '{model}' within queue_timeout_s")
        return await race_disconnect(request.receive, waiting, discard=lambda lease: lease.release())
    except QueueFull:
        gw.metrics.rejections.labels("queue_full").inc()
        return error(503, f"the queue is full ({gw.scheduler.queue_max} waiting)", "server_busy", retry_after=2)
    except SwitchFailed as exc:
        gw.metrics.requests.labels(model, "switch_failed").inc()
        return error(503, f"model '{model}' could not be loaded: {exc.reason}", "engine_unavailable",
                     retry_after=exc.retry_after_s)
    except ClientGone:
        gw.metrics.requests.labels(model, "client_gone").inc()
        return Response(status_code=499)
    except Expired as exc:
        gw.metrics.requests.labels(model, "timeout").inc()
        return error(504, str(exc), "timeout")
    finally:
        gw.metrics.queue_depth.set(gw.scheduler.depth)



@guarded
async def models(request: Request, gw: Gateway) -> Response:
    loaded_model = gw.manager.model
    data = [{"id": name, "object": "model", "created": int(gw.started_at), "owned_by": "animllm",
             "loaded": name == loaded_model, "aliases": spec.aliases, "tasks": spec.tasks, "source": spec.source}
            for name, spec in gw.loaded.config.models.items()]
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return JSONResponse({"status": "ok", "model": gw.manager.model,
                         "engine": gw.manager.status(gw.scheduler.switching_to).state})


@guarded
async def metrics(request: Request, gw: Gateway) -> Response:
    body = gw.metrics.render()
    engine = gw.manager.engine
    if engine is not None and gw.manager.model:
        with contextlib.suppress(Exception):
            async with gw.session.get(f"{engine.base_url}/metrics", headers=gw.engine_headers(),
                                      timeout=aiohttp.ClientTimeout(total=ENGINE_PROBE_TIMEOUT_S)) as resp:
                body += b"\n# the loaded engine's own metrics\n" + await resp.read()
    return Response(body, media_type="text/plain; version=0.0.4")


def status_report(gw: Gateway, report: nvml.GpuReport) -> StatusReport:
    """On the event loop (the scheduler's lists are the loop's); `report` read beforehand."""
    now = time.monotonic()
    return StatusReport(
        gateway=GatewayProcess(pid=os.getpid(), uptime_s=round(time.time() - gw.started_at, 1)),
        engine=gw.manager.status(gw.scheduler.switching_to), queue_depth=gw.scheduler.depth,
        in_flight=gw.scheduler.in_flight,
        queues=gw.scheduler.queues(),
        backoff={m: round(until - now, 1) for m, (until, _) in gw.scheduler.backoff_until.items() if until > now},
        busy=gw.verdict.loaded or gw.verdict.others,
        vram=VramStatus(gpus=[GpuMemory(index=g.index, name=g.name, total_bytes=g.total_bytes, used_bytes=g.used_bytes,
                                        free_bytes=g.free_bytes) for g in report.gpus], error=report.error))


@guarded
async def admin_status(request: Request, gw: Gateway) -> Response:
    # NVML is read in a thread, as the admission watcher does: never block the event loop.
    gpus = await asyncio.to_thread(nvml.probe, gw.nvml_module)
    return JSONResponse(status_report(gw, gpus).to_json())


@guarded
async def admin_switch(request: Request, gw: Gateway) -> Response:
    wanted = guard.parse_object(await guard.read_body(request, gw.max_body_bytes)).get("model")
    if not isinstance(wanted, str) or not wanted:
        return error(400, "expected {\"model\": NAME}", param="model")
    model = gw.resolve(wanted)
    if model is None:
        raise gw.not_found(wanted)
    if gw.manager.model == model:
        return JSONResponse(SwitchReport(from_model=model, to_model=model, outcome="already loaded").to_json())
    try:
        await gw.load(model)
    except QueueFull:
        return error(503, f"the queue is full ({gw.scheduler.queue_max} waiting)", "server_busy", retry_after=2)
    except SwitchFailed as exc:
        return error(503, f"model '{model}' could not be loaded: {exc.reason}", "engine_unavailable",
                     retry_after=exc.retry_after_s)
    report = gw.manager.last_switch or SwitchReport(from_model=None, to_model=model, outcome="ok")
    return JSONResponse(report.to_json())


@guarded
async def admin_stop(request: Request, gw: Gateway) -> Response:
    if gw.shutdown_hook:
        asyncio.get_running_loop().call_later(0.05, gw.shutdown_hook)
    pids = sorted(gw.manager.engine.pids()) if gw.manager.engine else []
    return JSONResponse(StopAnswer(stopping=True, engine_pids=pids).to_json())


def create_app(gateway: Gateway, *, on_startup: Callable[[], Awaitable[None]] | None = None,
               on_shutdown: Callable[[Any], Awaitable[None]] | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await gateway.start()
        if on_startup:
            await on_startup()
        try:
            yield
        finally:
            stopped = await gateway.close()
            if on_shutdown:
                await on_shutdown(stopped)

    relayed = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize")
    routes = [Route(path, proxy, methods=["POST"]) for path in relayed]
    routes += [Route("/v1/models", models), Route("/health", health), Route("/metrics", metrics),
               Route("/admin/status", admin_status), Route("/admin/switch", admin_switch, methods=["POST"]),
               Route("/admin/stop", admin_stop, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    return app

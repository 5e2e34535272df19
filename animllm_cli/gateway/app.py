"""The OpenAI-compatible gateway: one port for every configured model.

Requests are relayed as raw bytes (parsed once, for routing), streams chunk by chunk as
they arrive. The hot path avoids per-request work: a relay that parses every SSE event
costs measurably more latency (benchmarks/gateway_overhead.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from typing import Any, Awaitable, Callable, Iterator

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from animllm_cli.config import LoadedConfig
from animllm_cli.gateway import guard
from animllm_cli.gateway.admission import Admission, Verdict, kv_usage
from animllm_cli.gateway.guard import Refused, error
from animllm_cli.gateway.metrics import GatewayMetrics, merged_exposition
from animllm_cli.gateway.pool import SWITCH_HISTORY, EnginePool
from animllm_cli.gateway.scheduler import Decision, Lease, QueueFull, Scheduler, SwitchFailed
from animllm_cli.gateway.relay import (Bounds, ClientGone, Deadlines, Expired, Target, WaitingStream, forward,
                                       race_disconnect)
from animllm_cli.wire import EngineStatus, GatewayProcess, GpuMemory, RemoteStatus, StatusReport, StopAnswer, SwitchHistory, SwitchReport, VramStatus
from animllm_cli.gateway.upstreams import Upstreams
from animllm_cli.gpu import nvml

log = logging.getLogger(__name__)
PRIORITY_LIMIT = 1000
ADMIN_PRIORITY = PRIORITY_LIMIT + 1   # `animllm switch` and the first load go before any client
ENGINE_PROBE_TIMEOUT_S = 2.0          # the admission probe of the engine's /metrics
LOADING_COMMENT_S = 5.0               # a stream waiting for a load hears what it waits for this often
REMOTE_CONCURRENCY_PER_URL = 16       # a remote model's default concurrency, per upstream URL
RECENT_SWITCHES = 10                  # /admin/status's recent_switches (the pool keeps more)


class Gateway:
    def __init__(self, loaded: LoadedConfig, *, api_key: str | None,
                 pool: EnginePool | None = None, nvml_module: object | None = None,
                 backoff_s: float = 30.0, admission_interval_s: float = 1.0) -> None:
        self.loaded = loaded
        self.catalogue = loaded.catalogue
        self.metrics = GatewayMetrics()
        self.api_key = api_key
        self.nvml_module = nvml_module
        self.pool = pool or EnginePool(loaded, nvml_module=nvml_module)
        self.pool.on_death = self._engine_died
        self.upstreams = Upstreams(loaded)  # the models served elsewhere
        limits = loaded.config.limits
        self.bounds = Bounds.from_config(loaded.config)
        self.max_body_bytes = limits.max_body_bytes
        self.switch_on_demand = loaded.config.server.switch_on_demand
        # Each model's concurrency limit, worked out once: the scheduler asks on every decision.
        self._limits = {name: self._concurrency(name) for name in loaded.config.models}
        rule = loaded.config.scheduler
        self.scheduler = Scheduler(self._switch, self._limits.__getitem__, lambda: self.pool.models,
                                   remote=frozenset(self.upstreams.models), place=self.pool.fits,
                                   pinned=self.pool.pinned, asleep=lambda: self.pool.asleep,
                                   queue_max=limits.queue_max, backoff_s=backoff_s, policy=rule.policy,
                                   max_wait_s=rule.max_wait_s, batch_factor=rule.batch_factor)
        self.admission = Admission(limits.vram_threshold)
        self.admission_interval_s = admission_interval_s   # also how often NVML is sampled for each engine's VRAM
        self.keep_alive_interval_s = 1.0
        self.loading_comment_s = LOADING_COMMENT_S
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
        self._tasks.append(asyncio.create_task(self.upstreams.watch()))
        self._tasks.append(asyncio.create_task(self._watch_keep_alive()))

    async def close(self) -> Any:
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # let them end (the health checks close their connections)
            await asyncio.wait(self._tasks, timeout=5)
        stopped = await self.pool.shutdown()
        if self.session:
            await self.session.close()
        return stopped

    async def load(self, model: str) -> None:
        """Load `model` the way a request would, ahead of any: used at start (preload) and
        by /admin/switch. It evicts only what it must."""
        lease = await self.scheduler.acquire(model, priority=ADMIN_PRIORITY, urgent=True)
        lease.release()

    def targets(self, model: str) -> Iterator[Target]:
        """Where a request for `model` may go, in the order to try: its engine (with the
        engine's own key), or its upstream URLs, the least busy healthy one first."""
        remote = self.upstreams.get(model)
        if remote is None:
            engine = self.pool.engine_for(model)
            if engine is not None:
                yield Target(engine.base_url, engine.headers, f"the engine for '{model}'")
            return
        spec = remote.spec
        for upstream in remote.candidates():
            yield Target(upstream.url, remote.headers, f"upstream {upstream.url} of '{model}'", remote.tls,
                         spec.connect_timeout_s, spec.first_byte_timeout_s, spec.idle_timeout_s, upstream,
                         spec.api_key_env)

    def request_name(self, requested: str, model: str) -> str | None:
        """What the request's `model` must become for its target: None when it may stay."""
        remote = self.upstreams.get(model)
        if remote is not None:
            return None if requested == remote.served_name else remote.served_name
        return None if requested in self.catalogue.served_names(model) else model

    # ------------------------------------------------------------------ scheduling glue
    def _concurrency(self, model: str) -> int:
        """Requests sent to the model at once: `concurrency`, else its engine's max_num_seqs,
        else 16 (per URL, for a model served elsewhere)."""
        view = self.loaded.model(model)
        settings = view.settings
        default = REMOTE_CONCURRENCY_PER_URL * len(view.spec.upstream.urls) if view.remote else 16
        return settings.get("concurrency") or settings.get("max_num_seqs") or default

    async def _switch(self, decision: Decision) -> None:
        labels = {"model": decision.model or "", "reason": decision.reason, "chosen_by": decision.chosen_by}
        try:
            report = await self.pool.switch(decision)
        except Exception:
            self.metrics.switches.labels(outcome="failed", **labels).inc()
            raise
        self.metrics.switches.labels(outcome="ok", **labels).inc()
        if decision.model is not None:
            self.metrics.switch_seconds.observe(report.total_s or 0)

    def _engine_died(self, model: str, reason: str) -> None:
        self.metrics.engine_deaths.labels(model).inc()
        self.scheduler.engine_lost()

    async def unload(self, model: str, *, sleep: bool = False) -> SwitchReport | None:
        """Evict `model` once its requests have finished (a sleeper at once): stop it, or
        with `sleep` send it to sleep where it can. None: nothing to do (neither loaded nor
        asleep; asleep already, with `sleep`)."""
        if model not in self.pool.models and (sleep or model not in self.pool.sleepers):
            return None
        await self.scheduler.unload(model, "sleep" if sleep else "unload")
        return self.pool.last_switch

    async def _watch_keep_alive(self) -> None:
        """Unload each model that has stayed idle for its keep_alive (-1: never; pinned: never)."""
        while True:
            await asyncio.sleep(self.keep_alive_interval_s)
            if self.scheduler.operation is not None:  # not queued behind a load: a request may come first
                continue
            for model in self.pool.models:
                try:
                    keep, idle_s = self.pool.keep_alive(model), self.scheduler.idle_for(model)
                    if keep >= 0 and not self.pool.pinned(model) and idle_s is not None and idle_s >= keep:
                        self.scheduler.request_unload(model, "keep_alive")
                except Exception:  # noqa: BLE001 - the watcher must outlive one bad model
                    log.exception("keep-alive check of %s failed", model)

    # ------------------------------------------------------------------ admission
    async def _watch_admission(self) -> None:
        while True:
            try:
                self.verdict = await self._judge()
            except Exception:  # a probe failing must never take the gateway down
                self.verdict = Verdict()
            await asyncio.sleep(self.admission_interval_s)

    async def _judge(self) -> Verdict:
        """Read NVML once (each engine's VRAM, its peak) and each ready engine's KV cache."""
        ready = [m for m in self.pool.models if self.pool.engine_for(m)]
        gpus, pids = await asyncio.to_thread(lambda: (self.pool.refresh(), self.pool.all_pids()))
        self.metrics.record_vram(self.pool.residents.values())
        usage = await asyncio.gather(*(self._kv_usage(m) for m in ready))
        kv = {m: u for m, u in zip(ready, usage) if u is not None}
        return self.admission.judge(gpus, pids, self.pool.reserved(), kv)

    async def _kv_usage(self, model: str) -> float | None:
        text = await self.engine_metrics(model)
        return kv_usage(text) if text is not None else None

    async def engine_metrics(self, model: str) -> bytes | None:
        """The model's engine's own /metrics, or None (no engine, or no answer within the
        probe's bound: a hung engine gives no figures, and never a hang)."""
        engine = self.pool.engine_for(model)
        if engine is None or not self.session:
            return None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self.session.get(f"{engine.base_url}/metrics", headers=engine.headers,
                                        timeout=aiohttp.ClientTimeout(total=ENGINE_PROBE_TIMEOUT_S)) as resp:
                return await resp.read()
        return None

    def queue_failure(self, model: str, exc: Exception) -> Response:
        """A wait for a slot that failed, as the client's answer (and its metric)."""
        if isinstance(exc, QueueFull):
            self.metrics.rejections.labels("queue_full").inc()
            return error(503, f"the queue is full ({self.scheduler.queue_max} waiting)", "server_busy", retry_after=2)
        if isinstance(exc, SwitchFailed):
            self.metrics.requests.labels(model, "switch_failed").inc()
            return error(503, f"model '{model}' could not be loaded: {exc.reason}", "engine_unavailable",
                         retry_after=exc.retry_after_s)
        if isinstance(exc, ClientGone):
            self.metrics.requests.labels(model, "client_gone").inc()
            return Response(status_code=499)
        if isinstance(exc, Expired):
            self.metrics.requests.labels(model, "timeout").inc()
            return error(504, str(exc), "timeout")
        log.exception("waiting for '%s' failed", model, exc_info=exc)
        self.metrics.requests.labels(model, "error").inc()
        return error(500, f"waiting for '{model}' failed: {exc}", "internal_error")

    # ------------------------------------------------------------------ routing
    def resolve(self, requested: str) -> str | None:
        """The catalogue's rule, with the resident models, the remote ones (and the one being
        loaded) first for a task: a task never costs a switch that another model could spare."""
        return self.catalogue.find(requested, loaded=(*self.pool.models, *self.upstreams.models,
                                                      self.scheduler.switching_to))

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
    renamed = gw.request_name(requested, model)
    if changed or renamed:
        payload["model"] = renamed or requested
        raw = json.dumps(payload).encode()
    remote = gw.upstreams.get(model)
    if remote is not None:
        _admit_remote(model, remote.key_problem)
    else:
        _admit_local(gw, model)
    stream = payload.get("stream") is True
    lease = gw.scheduler.try_acquire(model)
    loading = remote is None and (model not in gw.pool.models or model in gw.scheduler.draining)
    if lease is None and stream and loading:
        refused = _refusal(gw, model)
        if refused is not None:
            return refused
        # A load ahead: answer now, and say what it waits for while it waits.
        return WaitingStream(gw, request, model, _acquire(gw, model, priority, deadlines), raw, deadlines,
                             lambda: gw.scheduler.waiting_for(model), gw.loading_comment_s)
    if lease is None:
        lease = await _queue(gw, request, model, priority, deadlines)
        if isinstance(lease, Response):
            return lease
    return await forward(gw, request, model, lease, raw, stream, deadlines)


def _admit_remote(model: str, key_problem: str | None) -> None:
    """A model served elsewhere: never loaded here and no VRAM of ours, so only its key matters."""
    if key_problem:
        raise Refused(error(503, f"model '{model}' is served elsewhere and {key_problem}", "engine_unavailable"),
                      "upstream_key")


def _admit_local(gw: Gateway, model: str) -> None:
    """Refused before it waits: a switch that switch_on_demand forbids, or VRAM/KV pressure."""
    residents = gw.pool.models
    if not gw.switch_on_demand and residents and model not in residents:
        raise Refused(error(409, f"model '{model}' is not loaded ({', '.join(residents)} is) and switch_on_demand "
                                 f"is off", "model_not_loaded", param="model", code="model_not_loaded"), "not_loaded")
    busy = gw.verdict.reason(model, resident=model in residents)
    if busy:
        raise Refused(error(503, f"busy: {busy}", "server_busy", retry_after=5), "pressure")


async def _acquire(gw: Gateway, model: str, priority: float, deadlines: Deadlines) -> Lease:
    """A slot on `model` (loading it if needed), within queue_timeout_s."""
    gw.metrics.queue_depth.set(gw.scheduler.depth + 1)
    try:
        return await deadlines.within(gw.scheduler.acquire(model, priority), gw.bounds.queue_s,
                                      f"no slot for '{model}' within queue_timeout_s")
    finally:
        gw.metrics.queue_depth.set(gw.scheduler.depth)


async def _queue(gw: Gateway, request: Request, model: str, priority: float, deadlines: Deadlines) -> Lease | Response:
    """Wait for a slot on `model` (loading it if needed), unless the client goes away."""
    try:
        return await race_disconnect(request.receive, _acquire(gw, model, priority, deadlines),
                                     discard=lambda lease: lease.release())
    except (QueueFull, SwitchFailed, ClientGone, Expired) as exc:
        return gw.queue_failure(model, exc)


def _refusal(gw: Gateway, model: str) -> Response | None:
    """What a wait for `model` would fail with at once (a full queue, a backoff), as a response."""
    try:
        gw.scheduler.check(model)
    except (QueueFull, SwitchFailed) as exc:
        return gw.queue_failure(model, exc)
    return None



@guarded
async def models(request: Request, gw: Gateway) -> Response:
    residents = gw.pool.models
    data = [{"id": name, "object": "model", "created": int(gw.started_at), "owned_by": "animllm",
             "loaded": name in residents or name in gw.upstreams, "aliases": spec.aliases, "tasks": spec.tasks,
             "source": spec.source, "remote": spec.remote}
            for name, spec in gw.loaded.config.models.items()]
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return JSONResponse({"status": "ok", "model": gw.pool.model, "models": gw.pool.models,
                         "engine": newest_engine(gw).state})


@guarded
async def metrics(request: Request, gw: Gateway) -> Response:
    for name, remote in gw.upstreams.models.items():
        for upstream in remote.upstreams:
            gw.metrics.upstream_up.labels(name, upstream.url).set(1 if upstream.healthy is not False else 0)
    body = gw.metrics.render()
    texts = [t for t in await asyncio.gather(*(gw.engine_metrics(m) for m in gw.pool.models)) if t]
    if texts:
        with contextlib.suppress(ValueError):  # an engine's exposition we cannot parse is left out
            body += b"\n# the engines' own metrics\n" + merged_exposition(texts)
    return Response(body, media_type="text/plain; version=0.0.4")


def engine_statuses(gw: Gateway) -> list[EngineStatus]:
    """Every engine of the pool, as `animllm ps` shows it (on the event loop)."""
    scheduler, queues = gw.scheduler, gw.scheduler.queues()
    statuses = [gw.pool.status(r, running=scheduler.running.get(m, 0),
                               waiting=queues[m].waiting if m in queues else 0,
                               idle_s=_rounded(scheduler.idle_for(m)))
                for m, r in list(gw.pool.residents.items())]
    for status in statuses:  # ready, but starting nothing new: it is to be unloaded or evicted
        if status.state == "ready" and status.model in scheduler.draining:
            status.state = "draining"
    return statuses


def remote_statuses(gw: Gateway) -> list[RemoteStatus]:
    """Every model served elsewhere, with each URL's health (on the event loop)."""
    queues = gw.scheduler.queues()
    return [remote.status(running=gw.scheduler.running.get(name, 0),
                          waiting=queues[name].waiting if name in queues else 0)
            for name, remote in gw.upstreams.models.items()]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def newest_engine(gw: Gateway, statuses: list[EngineStatus] | None = None) -> EngineStatus:
    """The single-slot view: the model loaded last (or being loaded), and the last switch."""
    switching_to = gw.scheduler.switching_to
    newest = next((s for s in statuses or engine_statuses(gw) if s.model == gw.pool.newest), None)
    if newest is None:
        newest = EngineStatus(model=None, state="none")
    return newest.model_copy(update={"switching_to": switching_to, "last_switch": gw.pool.last_switch,
                                     "state": "switching" if switching_to else newest.state})


def status_report(gw: Gateway, report: nvml.GpuReport) -> StatusReport:
    """On the event loop (the scheduler's lists are the loop's); `report` read beforehand."""
    now = time.monotonic()
    engines = engine_statuses(gw)
    return StatusReport(
        gateway=GatewayProcess(pid=os.getpid(), uptime_s=round(time.time() - gw.started_at, 1)),
        engine=newest_engine(gw, engines), engines=engines, queue_depth=gw.scheduler.depth,
        in_flight=gw.scheduler.in_flight,
        queues=gw.scheduler.queues(),
        backoff={m: round(until - now, 1) for m, (until, _) in gw.scheduler.backoff_until.items() if until > now},
        busy=gw.verdict.summary, sleep_mode=gw.pool.sleep_status(), remotes=remote_statuses(gw),
        recent_switches=gw.pool.switches[-RECENT_SWITCHES:],
        vram=VramStatus(gpus=[GpuMemory(index=g.index, name=g.name, total_bytes=g.total_bytes, used_bytes=g.used_bytes,
                                        free_bytes=g.free_bytes) for g in report.gpus], error=report.error))


@guarded
async def admin_switches(request: Request, gw: Gateway) -> Response:
    since = request.query_params.get("since")
    try:
        after = float(since) if since is not None else None
    except ValueError:
        return error(400, f"since={since!r}: expected a wall-clock time in seconds (time.time())", param="since")
    kept = [s for s in gw.pool.switches if after is None or (s.finished_at or 0) > after]
    return JSONResponse(SwitchHistory(recorded=gw.pool.switches_recorded, capacity=SWITCH_HISTORY, switches=kept).to_json())


@guarded
async def admin_status(request: Request, gw: Gateway) -> Response:
    # NVML is read in a thread, as the admission watcher does: never block the event loop.
    gpus = await asyncio.to_thread(nvml.probe, gw.nvml_module)
    return JSONResponse(status_report(gw, gpus).to_json())


async def _model_named(request: Request, gw: Gateway) -> str:
    return _resolved(await _admin_body(request, gw), gw)


async def _admin_body(request: Request, gw: Gateway) -> dict:
    return guard.parse_object(await guard.read_body(request, gw.max_body_bytes))


def _resolved(body: dict, gw: Gateway) -> str:
    wanted = body.get("model")
    if not isinstance(wanted, str) or not wanted:
        raise Refused(error(400, "expected {\"model\": NAME}", param="model"), "no_model")
    model = gw.resolve(wanted)
    if model is None:
        raise gw.not_found(wanted)
    return model


@guarded
async def admin_switch(request: Request, gw: Gateway) -> Response:
    model = await _model_named(request, gw)
    remote = gw.upstreams.get(model)
    if remote is not None:
        return JSONResponse(SwitchReport(from_model=None, to_model=model, outcome="remote", notes=[
            f"'{model}' is served by {', '.join(u.url for u in remote.upstreams)}: nothing to load here"]).to_json())
    if model in gw.pool.models:
        return JSONResponse(SwitchReport(from_model=model, to_model=model, outcome="already loaded",
                                         gpus=list(gw.pool.residents[model].gpus)).to_json())
    try:
        await gw.load(model)
    except (QueueFull, SwitchFailed) as exc:
        return gw.queue_failure(model, exc)
    report = gw.pool.last_switch or SwitchReport(from_model=None, to_model=model, outcome="ok")
    return JSONResponse(report.to_json())


@guarded
async def admin_unload(request: Request, gw: Gateway) -> Response:
    """{"model": M}: stop it; {"model": M, "sleep": true}: send it to sleep where it can, else stop it."""
    body = await _admin_body(request, gw)
    model, asleep = _resolved(body, gw), body.get("sleep", False)
    if not isinstance(asleep, bool):
        return error(400, "\"sleep\" must be true or false", param="sleep")
    if model in gw.upstreams:
        return error(409, f"model '{model}' is served elsewhere (upstream): nothing to unload here",
                     "model_not_loaded", param="model", code="model_is_remote")
    report = await gw.unload(model, sleep=asleep)
    if report is None:
        state = "asleep already" if asleep and model in gw.pool.sleepers else "not loaded"
        return error(409, f"model '{model}' is {state}", "model_not_loaded", param="model", code="model_not_loaded")
    return JSONResponse(report.to_json())


@guarded
async def admin_stop(request: Request, gw: Gateway) -> Response:
    if gw.shutdown_hook:
        asyncio.get_running_loop().call_later(0.05, gw.shutdown_hook)
    return JSONResponse(StopAnswer(stopping=True, engine_pids=sorted(gw.pool.all_pids())).to_json())


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
               Route("/admin/status", admin_status), Route("/admin/switches", admin_switches),
               Route("/admin/switch", admin_switch, methods=["POST"]),
               Route("/admin/unload", admin_unload, methods=["POST"]),
               Route("/admin/stop", admin_stop, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    return app

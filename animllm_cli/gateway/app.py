"""The OpenAI-compatible gateway: one port for every configured model.

`Gateway` is what every route shares: the pool, the scheduler, the upstreams, admission
and metrics, and the glue between them. The routes live by concern (routes_clients.py:
what clients call; ollama/: Ollama's API, translated to the same relay; routes_admin.py:
what `animllm` and monitoring call) and are handed to `create_app`. Requests are relayed as raw bytes (parsed once, for routing), streams chunk
by chunk as they arrive. The hot path avoids per-request work: a relay that parses every
SSE event costs measurably more latency (benchmarks/gateway_overhead.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Awaitable, Callable, Iterator

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from animllm_cli.config import LoadedConfig
from animllm_cli.engine import vllm_routes
from animllm_cli.engine.command import installed_vllm_version
from animllm_cli.engine.model_kind import model_serves
from animllm_cli.engine.supervisor import Engine
from animllm_cli.gateway import guard
from animllm_cli.gateway.admission import Admission, Verdict, kv_usage
from animllm_cli.gateway.clients import Clients
from animllm_cli.gateway.deadlines import Bounds, Expired
from animllm_cli.gateway.dialects import dialect_of
from animllm_cli.gateway.guard import Refused, error
from animllm_cli.gateway.metrics import GatewayMetrics
from animllm_cli.gateway.pool import EnginePool
from animllm_cli.gateway.relay import ROUTE_SEND, SERVER_SEND, ClientGone, Target
from animllm_cli.gateway.scheduler import Decision, QueueFull, Scheduler, SwitchFailed
from animllm_cli.gateway.stored_responses import StoredResponses
from animllm_cli.gateway.upstreams import Upstreams
from animllm_cli.wire import EngineDeath, SwitchReport

log = logging.getLogger(__name__)
PRIORITY_LIMIT = 1000                 # a client's priority lies within +-this
ADMIN_PRIORITY = PRIORITY_LIMIT + 1   # `animllm switch` and the first load go before any client
ENGINE_PROBE_TIMEOUT_S = 2.0          # the admission probe of the engine's /metrics
LOADING_COMMENT_S = 5.0               # a stream waiting for a load hears what it waits for this often
REMOTE_CONCURRENCY_PER_URL = 16       # a remote model's default concurrency, per upstream URL
SERVES_TTL_S = 30.0                   # how long /v1/models keeps what it read of a model's kind


class Gateway:
    def __init__(self, loaded: LoadedConfig, *, api_key: str | None,
                 pool: EnginePool | None = None, nvml_module: object | None = None,
                 backoff_s: float = 30.0, admission_interval_s: float = 1.0) -> None:
        self.loaded = loaded
        self.catalogue = loaded.catalogue
        self.metrics = GatewayMetrics()
        self.clients = Clients(loaded, api_key)  # who may call, what each may do, what each used
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
                                   restarting=lambda: self.pool.restarting, claim=self.pool.claim,
                                   queue_max=limits.queue_max, backoff_s=backoff_s, policy=rule.policy,
                                   max_wait_s=rule.max_wait_s, batch_factor=rule.batch_factor)
        self.admission = Admission(limits.vram_threshold)
        self.admission_interval_s = admission_interval_s   # also how often NVML is sampled for each engine's VRAM
        self.keep_alive_interval_s = 1.0
        self.loading_comment_s = LOADING_COMMENT_S
        self.verdict = Verdict()
        self.stored_responses = StoredResponses()  # which engine keeps each stored response (Responses API)
        self.vllm_version = None                  # the engines' vLLM: which routes it has (read at start)
        self._serves: dict[str, tuple[float, list[str] | None]] = {}  # model -> (when read, what it serves)
        self.session: aiohttp.ClientSession | None = None
        self.started_at = time.time()
        self.shutdown_hook: Callable[[], None] | None = None
        self.http_parser: str | None = None     # what uvicorn parses requests with (server.build: httptools | h11)
        self.failed: Exception | None = None   # the first model could not be loaded
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                                             auto_decompress=False, skip_auto_headers=("User-Agent",))
        self.vllm_version = await asyncio.to_thread(self._engine_vllm_version)
        self._tasks.append(asyncio.create_task(self._watch_admission()))
        self._tasks.append(asyncio.create_task(self.upstreams.watch()))
        self._tasks.append(asyncio.create_task(self._watch_keep_alive()))
        if self.clients.usage_log is not None:
            self._tasks.append(asyncio.create_task(self.clients.keep_records()))

    @property
    def vllm_version(self) -> str | None:
        return self._vllm_version

    @vllm_version.setter
    def vllm_version(self, version: str | None) -> None:
        """The engines' vLLM, and with it `served_routes`: the routes it has, by path, read once
        and looked up on every request (None: not known, left to vLLM)."""
        self._vllm_version = version
        self.served_routes: dict[str, vllm_routes.RouteSpec] | None = \
            vllm_routes.routes_of(version) if version else None

    def _engine_vllm_version(self) -> str | None:
        """The vLLM the engines run, from the engine Python's package metadata; None when it
        cannot be read (or no model is local): routes are then left to vLLM to judge."""
        if not self.loaded.local_model_names():
            return None
        try:
            return installed_vllm_version(self.loaded)
        except Exception:  # noqa: BLE001 - a probe that fails must not stop the gateway
            log.warning("could not read the engine's vLLM version", exc_info=True)
            return None

    async def close(self) -> Any:
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # let them end (the health checks close their connections)
            await asyncio.wait(self._tasks, timeout=5)
        stopped = await self.pool.shutdown()
        await self.clients.flush()
        if self.session:
            await self.session.close()
        return stopped

    async def load(self, model: str) -> SwitchReport | None:
        """Load `model` the way a request would, ahead of any: used at start (preload) and
        by /admin/switch. It evicts only what it must. Returns the report of the switch to
        `model` it waited for (not another's that ended meanwhile); None: there was none."""
        recorded = self.pool.switches_recorded
        lease = await self.scheduler.acquire(model, priority=ADMIN_PRIORITY, urgent=True)
        lease.release()
        return next((r for r in reversed(self.pool.reports_since(recorded)) if r.to_model == model), None)

    def targets(self, model: str) -> Iterator[Target]:
        """Where a request for `model` may go, in the order to try: its engine (with the
        engine's own key), or its upstream URLs, the least busy healthy one first."""
        remote = self.upstreams.get(model)
        if remote is None:
            engine = self.pool.engine_for(model)
            if engine is not None:
                yield Target(engine.base_url, engine.headers, f"the engine for '{model}'", engine=engine)
            return
        spec = remote.spec
        for upstream in remote.candidates():
            yield self.target_at(model, upstream.url)

    def target_at(self, model: str, url: str) -> Target | None:
        """The target of one URL of a model served elsewhere, in rotation or not (a response
        stored there is asked for there)."""
        remote = self.upstreams.get(model)
        found = next((u for u in remote.upstreams if u.url == url), None) if remote else None
        if found is None:
            return None
        spec = remote.spec
        return Target(found.url, remote.headers, f"upstream {found.url} of '{model}'", remote.tls,
                      spec.connect_timeout_s, spec.first_byte_timeout_s, spec.idle_timeout_s, found, spec.api_key_env)

    def waiting_for(self, model: str) -> str:
        """What a request for `model` waits for now, in words (the loading comments): the
        download of its files, else what the scheduler says."""
        download = self.pool.downloads.get(model)
        done = download.done if download is not None else None
        return f"downloading {model}, {done}" if done is not None else self.scheduler.waiting_for(model)

    def needs_load(self, model: str) -> bool:
        """A request for `model` now waits for a switch: a local model not ready, or draining
        (to be unloaded or evicted, then loaded again)."""
        return self.upstreams.get(model) is None and (model not in self.pool.models or model in self.scheduler.draining)

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

    def _engine_died(self, model: str, death: EngineDeath) -> None:
        self.metrics.engine_deaths.labels(model, death.kind).inc()
        self.scheduler.engine_lost()

    async def engine_death(self, engine: Engine) -> EngineDeath | None:
        """Whether a local engine a request just failed on is dead (gateway/pool.py, `check`)."""
        return await self.pool.check(engine)

    async def unload(self, model: str, *, sleep: bool = False) -> SwitchReport | None:
        """Evict `model` once its requests have finished (a sleeper at once): stop it, or
        with `sleep` send it to sleep where it can. None: nothing to do (neither loaded nor
        asleep; asleep already, with `sleep`)."""
        if model not in self.pool.models and (sleep or model not in self.pool.sleepers):
            return None
        recorded = self.pool.switches_recorded
        await self.scheduler.unload(model, "sleep" if sleep else "unload")
        return next((r for r in reversed(self.pool.reports_since(recorded)) if model in r.evicted),
                    self.pool.last_switch)

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
        gpus, pids = await asyncio.to_thread(self.pool.reading)
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
        if isinstance(exc, QueueFull) and exc.client:
            self.metrics.rejections.labels("client_queue_share").inc()
            return error(429, f"client '{exc.client}' has its share of the queue waiting ({exc.limit}: its "
                              f"queue_share of limits.queue_max)", "rate_limit_error", code="queue_share",
                         retry_after=2)
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

    def serves(self, model: str) -> list[str] | None:
        """What `model` serves (engine/model_kind.py), read again after SERVES_TTL_S: a pull
        brings the config.json that says it (clients may poll /v1/models often)."""
        known = self._serves.get(model)
        if known is None or time.monotonic() - known[0] > SERVES_TTL_S:
            known = self._serves[model] = (time.monotonic(), model_serves(self.loaded, model))
        return known[1]

    def why_not_served(self, path: str) -> str:
        """Why an engine answered FastAPI's bare 404 on a route its release has: what vLLM
        registers it for, from the table of its routes."""
        spec = (self.served_routes or {}).get(path)
        if spec is not None and spec.tasks:
            return f"vLLM {self.vllm_version} registers it only for models that serve {' or '.join(spec.tasks)} " \
                   f"(see `serves` in /v1/models)"
        if spec is not None and spec.when:
            return f"vLLM {self.vllm_version} registers it only when {spec.when}"
        return "its vLLM registers that route only for models of the kind that use it (see `serves` in /v1/models)"

    def not_found(self, requested: str) -> Refused:
        return Refused(error(404, f"model '{requested}' not found; available: {', '.join(self.catalogue.available())}",
                             param="model", code="model_not_found"), "unknown_model")


Handler = Callable[[Request, Gateway], Awaitable[Response]]


def guarded(handler: Handler, media: tuple[str, ...] = guard.JSON_ONLY) -> Callable[[Request], Awaitable[Response]]:
    """A route handler that runs only past the guard (key, Host, Origin, the body's content
    type: `media`) and gets the Gateway; a Refused anywhere in it becomes its response and a
    metric. The gateway's own errors leave in the shape of the route's API (dialects.py)."""
    async def route(request: Request) -> Response:
        gw: Gateway = request.app.state.gateway
        try:
            client = request.state.client = guard.check(request, gw.clients, media)
            path = guard.path_of(request)
            admin_only = path.startswith("/admin/") or \
                (path == "/metrics" and gw.clients.configured)  # every client's usage is there
            if admin_only and not client.admin:
                raise Refused(error(403, f"client '{client.name}' may not call {request.url.path} (the admin routes "
                                         f"and /metrics: admin: true in its clients: entry gives it them)",
                                    "permission_error"), "admin")
            response = await handler(request, gw)
        except Refused as refused:
            gw.metrics.rejections.labels(refused.label).inc()
            response = refused.response
        return dialect_of(guard.path_of(request)).reshape(response)

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        """The route as its own ASGI app (create_app puts it in place of Starlette's
        request_response, whose exception handling ExceptionMiddleware does as well), marking
        the `send` it hands its response (relay.body_sender)."""
        scope[ROUTE_SEND] = send
        response = await route(Request(scope, receive, send))
        await response(scope, receive, send)

    route.__name__ = handler.__name__
    route.asgi = asgi  # type: ignore[attr-defined]
    return route


class _GatewayApp(Starlette):
    """Starlette, keeping the server's own `send` in the scope (relay.body_sender)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(gateway: Gateway, routes: list[Route], *, on_startup: Callable[[], Awaitable[None]] | None = None,
               on_shutdown: Callable[[Any], Awaitable[None]] | None = None) -> Starlette:
    """The ASGI app serving `routes` (routes_clients.ROUTES and routes_admin.ROUTES) for `gateway`."""
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

    for route in routes:  # the guarded routes as their own ASGI apps (guarded: asgi); methods stay as declared
        if isinstance(route, Route) and hasattr(route.endpoint, "asgi"):
            route.app = route.endpoint.asgi
    # No middleware of its own: relay.body_sender passes body messages by Starlette's two
    # (ServerErrorMiddleware, ExceptionMiddleware), which act on a response's start only.
    app = _GatewayApp(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    return app

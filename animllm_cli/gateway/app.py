"""The OpenAI-compatible gateway: one port for every configured model.

Requests are relayed as raw bytes (parsed once, for routing), streams chunk by chunk as
they arrive. The hot path avoids per-request work: a relay that parses every SSE event
costs measurably more latency (benchmarks/gateway_overhead.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import re
import time
from typing import Any, Awaitable, Callable

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from animllm_cli.config import LoadedConfig
from animllm_cli.gateway.manager import EngineManager
from animllm_cli.gateway.metrics import GatewayMetrics
from animllm_cli.gateway.scheduler import Lease, QueueFull, Scheduler, SwitchFailed
from animllm_cli.gateway.state import LOOPBACK as LOOPBACK_HOSTS
from animllm_cli.gateway.state import (GatewayProcess, GpuMemory, StatusReport, StopAnswer, SwitchReport,
                                       VramStatus)
from animllm_cli.gpu import nvml

KV_USAGE = re.compile(rb"^vllm:(?:kv_cache_usage_perc|gpu_cache_usage_perc)\{[^}]*\} ([0-9.eE+-]+)", re.MULTILINE)
_timeout_at = getattr(asyncio, "timeout_at", None)  # Python 3.11+


def error(status: int, message: str, kind: str = "invalid_request_error", *, param: str | None = None,
          code: str | None = None, retry_after: float | None = None) -> JSONResponse:
    """OpenAI's error envelope."""
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def sse_error(message: str, kind: str) -> bytes:
    # A blank line first ends any event the upstream left half-written.
    return b"\n\ndata: " + json.dumps({"error": {"message": message, "type": kind}}).encode() + b"\n\n"


class ClientGone(Exception):
    pass


async def _disconnected(receive: Callable[[], Awaitable[dict]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def race_disconnect(receive: Callable[[], Awaitable[dict]], awaitable: Awaitable[Any]) -> Any:
    """Await `awaitable` unless the client goes away first (then cancel it: ClientGone)."""
    main = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait({main, watch}, return_when=asyncio.FIRST_COMPLETED)
        if main in done:
            return main.result()
        main.cancel()
        with contextlib.suppress(BaseException):
            await main
        raise ClientGone()
    finally:
        watch.cancel()


async def _with_deadline(awaitable: Awaitable[Any], deadline: float) -> Any:
    if _timeout_at is not None:
        async with _timeout_at(deadline):
            return await awaitable
    return await asyncio.wait_for(awaitable, max(0.0, deadline - asyncio.get_running_loop().time()))


class Gateway:
    def __init__(self, loaded: LoadedConfig, *, api_key: str | None, bind_host: str,
                 manager: EngineManager | None = None, nvml_module: object | None = None,
                 backoff_s: float = 30.0, admission_interval_s: float = 1.0) -> None:
        self.loaded = loaded
        self.catalogue = loaded.catalogue
        self.metrics = GatewayMetrics()
        self.api_key = api_key
        self.loopback_bind = bind_host in LOOPBACK_HOSTS
        self.nvml_module = nvml_module
        self.manager = manager or EngineManager(loaded, nvml_module=nvml_module)
        self.manager.on_death = self._engine_died
        limits = loaded.config.limits
        self.timeout_s = limits.request_timeout_s
        self.switch_on_demand = loaded.config.server.switch_on_demand
        self.threshold = limits.vram_threshold
        # Each model's concurrency limit, worked out once: the scheduler asks on every decision.
        self._limits = {name: self._concurrency(name) for name in loaded.config.models}
        self.scheduler = Scheduler(self._switch, self._limits.__getitem__, lambda: self.manager.model,
                                   queue_max=limits.queue_max, backoff_s=backoff_s)
        self.admission_interval_s = admission_interval_s
        self.busy_reason: str | None = None
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
        lease = await self.scheduler.acquire(model, priority=float("inf"))
        lease.release()

    # ------------------------------------------------------------------ scheduling glue
    def _concurrency(self, model: str) -> int:
        settings = self.loaded.model(model).settings
        return settings.get("concurrency") or settings.get("max_num_seqs") or 16

    async def _switch(self, model: str) -> None:
        try:
            report = await self.manager.switch(model)
        except Exception:
            self.metrics.switches.labels(model, "failed").inc()
            raise
        self.metrics.switches.labels(model, "ok").inc()
        self.metrics.switch_seconds.observe(report.total_s or 0)

    def _engine_died(self, model: str, reason: str) -> None:
        self.metrics.engine_deaths.labels(model).inc()
        self.scheduler.engine_lost()

    # ------------------------------------------------------------------ admission
    async def _watch_admission(self) -> None:
        while True:
            try:
                self.busy_reason = await self._pressure()
            except Exception:  # a probe failing must never take the gateway down
                self.busy_reason = None
            await asyncio.sleep(self.admission_interval_s)

    async def _pressure(self) -> str | None:
        report = await asyncio.to_thread(nvml.probe, self.nvml_module)
        for gpu in report.gpus:
            if gpu.total_bytes and gpu.used_bytes / gpu.total_bytes >= self.threshold:
                return (f"GPU {gpu.index} memory is {gpu.used_bytes / gpu.total_bytes:.0%} used "
                        f"(threshold {self.threshold:.0%})")
        engine = self.manager.engine
        if engine is not None and self.manager.model and self.session:
            async with self.session.get(f"{engine.base_url}/metrics") as resp:
                values = [float(v) for v in KV_USAGE.findall(await resp.read())]
            if values and max(values) >= self.threshold:
                return f"the engine's KV cache is {max(values):.0%} full (threshold {self.threshold:.0%})"
        return None

    # ------------------------------------------------------------------ security
    def resolve(self, requested: str) -> str | None:
        """The catalogue's rule, with the loaded model first for a task."""
        return self.catalogue.find(requested, loaded=(self.manager.model,))

    def not_found(self, requested: str) -> JSONResponse:
        self.metrics.rejections.labels("unknown_model").inc()
        return error(404, f"model '{requested}' not found; available: {', '.join(self.catalogue.available())}",
                     param="model", code="model_not_found")

    def guard(self, request: Request, *, local_ok: bool = False) -> Response | None:
        if self.loopback_bind:
            host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]").lower()
            if host not in LOOPBACK_HOSTS:
                self.metrics.rejections.labels("host").inc()
                return error(403, "non-local Host header refused on a loopback bind", "permission_error")
        if self.api_key is None:
            return None
        if local_ok and request.client and request.client.host in LOOPBACK_HOSTS:
            return None
        offered = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(offered.encode(), self.api_key.encode()):
            self.metrics.rejections.labels("auth").inc()
            return error(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
        return None


Handler = Callable[[Request, Gateway], Awaitable[Response]]


def guarded(*, local_ok: bool = False) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A route handler that runs only past the gateway's guard, and gets the Gateway.
    `local_ok`: a loopback client needs no key (the admin commands on this machine)."""
    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            gw: Gateway = request.app.state.gateway
            return gw.guard(request, local_ok=local_ok) or await handler(request, gw)
        route.__name__ = handler.__name__
        return route
    return wrap


def _priority(request: Request, payload: dict[str, Any]) -> tuple[float, bool]:
    """From the X-Priority header, or a `priority` field (removed: vLLM rejects it unless
    it runs priority scheduling). Returns (priority, body changed)."""
    if "priority" in payload:
        value = payload.pop("priority")
        return (float(value) if isinstance(value, (int, float)) else 0.0), True
    header = request.headers.get("x-priority")
    try:
        return (float(header) if header else 0.0), False
    except ValueError:
        return 0.0, False


@guarded()
async def proxy(request: Request, gw: Gateway) -> Response:
    raw = await request.body()
    try:
        payload = json.loads(raw)
    except ValueError:
        gw.metrics.rejections.labels("bad_json").inc()
        return error(400, "the request body is not valid JSON")
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), str) or not payload["model"]:
        gw.metrics.rejections.labels("no_model").inc()
        return error(400, "the request needs a `model` (a model name, alias or task)", param="model")
    requested = payload["model"]
    model = gw.resolve(requested)
    if model is None:
        return gw.not_found(requested)
    priority, changed = _priority(request, payload)
    if changed or requested not in gw.catalogue.served_names(model):
        payload["model"] = model
        raw = json.dumps(payload).encode()
    if not gw.switch_on_demand and gw.manager.model not in (None, model):
        gw.metrics.rejections.labels("not_loaded").inc()
        return error(409, f"model '{model}' is not loaded ('{gw.manager.model}' is) and switch_on_demand is off",
                     "model_not_loaded", param="model", code="model_not_loaded")
    if gw.busy_reason:
        gw.metrics.rejections.labels("pressure").inc()
        return error(503, f"busy: {gw.busy_reason}", "server_busy", retry_after=5)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + gw.timeout_s
    lease = gw.scheduler.try_acquire(model)
    if lease is None:
        gw.metrics.queue_depth.set(gw.scheduler.depth + 1)
        try:
            lease = await race_disconnect(request.receive, _with_deadline(gw.scheduler.acquire(model, priority), deadline))
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
        except TimeoutError:
            gw.metrics.requests.labels(model, "timeout").inc()
            return error(504, f"timed out after {gw.timeout_s:g}s waiting for '{model}'", "timeout")
        finally:
            gw.metrics.queue_depth.set(gw.scheduler.depth)
    return await _forward(gw, request, model, lease, raw, payload.get("stream") is True, deadline)


async def _forward(gw: Gateway, request: Request, model: str, lease: Lease, raw: bytes, stream: bool,
                   deadline: float) -> Response:
    engine = gw.manager.engine
    gw.metrics.in_flight.inc()
    released = False
    try:
        if engine is None:
            raise aiohttp.ClientConnectionError("no engine is loaded")
        upstream = await _with_deadline(gw.session.post(f"{engine.base_url}{request.url.path}", data=raw,
                                                        headers={"content-type": "application/json"}), deadline)
        if stream and upstream.status == 200:
            released = True  # the relay owns the lease and the upstream from here
            return RelayResponse(gw, model, lease, upstream, deadline)
        body = await _with_deadline(upstream.read(), deadline)
        gw.metrics.requests.labels(model, "ok" if upstream.status < 400 else f"http_{upstream.status}").inc()
        return Response(body, status_code=upstream.status,
                        media_type=upstream.headers.get("content-type", "application/json"))
    except TimeoutError:
        gw.metrics.requests.labels(model, "timeout").inc()
        return error(504, f"no answer within {gw.timeout_s:g}s", "timeout")
    except aiohttp.ClientError as exc:
        gw.metrics.requests.labels(model, "engine_error").inc()
        return error(503, f"the engine for '{model}' failed while answering: {exc}", "engine_unavailable",
                     retry_after=5)
    finally:
        if not released:
            gw.metrics.in_flight.dec()
            lease.release()


class RelayResponse(Response):
    """Streams the upstream's bytes as they arrive. Ends with an error event, never a
    fake [DONE], when the engine dies or the deadline passes; closes the upstream when the
    client goes away, so that vLLM stops generating."""

    def __init__(self, gw: Gateway, model: str, lease: Lease, upstream: aiohttp.ClientResponse, deadline: float) -> None:
        self.gw, self.model, self.lease, self.upstream, self.deadline = gw, model, lease, upstream, deadline
        self.status_code = upstream.status
        self.background = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        upstream = self.upstream
        gone = False

        async def watch() -> None:
            nonlocal gone
            await _disconnected(receive)
            gone = True
            upstream.close()  # drops the connection: vLLM aborts the request

        watcher = asyncio.create_task(watch())
        outcome = "ok"
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": [(b"content-type", upstream.headers.get("content-type", "text/event-stream").encode()),
                                    (b"cache-control", b"no-cache")]})
            try:
                await _with_deadline(self._pump(send), self.deadline)
            except TimeoutError:
                outcome = "timeout"
                await send({"type": "http.response.body", "more_body": True,
                            "body": sse_error(f"timed out after {self.gw.timeout_s:g}s", "timeout")})
            except (aiohttp.ClientError, asyncio.IncompleteReadError):
                outcome = "client_gone" if gone else "engine_died"
                if not gone:
                    await send({"type": "http.response.body", "more_body": True,
                                "body": sse_error(f"the engine for '{self.model}' stopped mid-answer", "engine_error")})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            upstream.close()
            self.gw.metrics.in_flight.dec()
            self.gw.metrics.requests.labels(self.model, "client_gone" if gone else outcome).inc()
            self.lease.release()

    async def _pump(self, send: Any) -> None:
        async for chunk in self.upstream.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not self.upstream.content.is_eof():
            raise aiohttp.ClientPayloadError("upstream closed early")


@guarded()
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


@guarded(local_ok=True)
async def metrics(request: Request, gw: Gateway) -> Response:
    body = gw.metrics.render()
    engine = gw.manager.engine
    if engine is not None and gw.manager.model:
        with contextlib.suppress(Exception):
            async with gw.session.get(f"{engine.base_url}/metrics", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                body += b"\n# the loaded engine's own metrics\n" + await resp.read()
    return Response(body, media_type="text/plain; version=0.0.4")


def status_report(gw: Gateway) -> StatusReport:
    report = nvml.probe(gw.nvml_module)
    now = time.monotonic()
    return StatusReport(
        gateway=GatewayProcess(pid=os.getpid(), uptime_s=round(time.time() - gw.started_at, 1)),
        engine=gw.manager.status(gw.scheduler.switching_to), queue_depth=gw.scheduler.depth,
        in_flight=gw.scheduler.in_flight,
        backoff={m: round(until - now, 1) for m, (until, _) in gw.scheduler.backoff_until.items() if until > now},
        busy=gw.busy_reason,
        vram=VramStatus(gpus=[GpuMemory(index=g.index, name=g.name, total_bytes=g.total_bytes, used_bytes=g.used_bytes,
                                        free_bytes=g.free_bytes) for g in report.gpus], error=report.error))


@guarded(local_ok=True)
async def admin_status(request: Request, gw: Gateway) -> Response:
    # NVML is read in a thread, as the admission watcher does: never block the event loop.
    return JSONResponse((await asyncio.to_thread(status_report, gw)).to_json())


@guarded(local_ok=True)
async def admin_switch(request: Request, gw: Gateway) -> Response:
    try:
        wanted = (await request.json())["model"]
    except (ValueError, KeyError, TypeError):
        return error(400, "expected {\"model\": NAME}", param="model")
    model = gw.resolve(str(wanted))
    if model is None:
        return gw.not_found(str(wanted))
    if gw.manager.model == model:
        return JSONResponse(SwitchReport(from_model=model, to_model=model, outcome="already loaded").to_json())
    try:
        await gw.load(model)
    except SwitchFailed as exc:
        return error(503, f"model '{model}' could not be loaded: {exc.reason}", "engine_unavailable",
                     retry_after=exc.retry_after_s)
    report = gw.manager.last_switch or SwitchReport(from_model=None, to_model=model, outcome="ok")
    return JSONResponse(report.to_json())


@guarded(local_ok=True)
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

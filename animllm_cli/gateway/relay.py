"""Relay one request to the engine as raw bytes, and its answer back: streams chunk by
chunk as they arrive, errors as error events, never a fake [DONE].

Every wait has its own bound (`limits` in the config):
- queue_timeout_s: waiting for a slot, a model load included;
- first_byte_timeout_s: from sending to the engine until its answer starts (for a
  non-streamed request that is the whole generation);
- idle_timeout_s: the longest gap between two chunks of a stream;
- total_timeout_s: the whole request from arrival, when set.
A client that goes away, queued or mid-answer, streamed or not, closes the upstream
connection, so that vLLM stops generating and the slot is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

import aiohttp
from starlette.requests import Request
from starlette.responses import Response

from animllm_cli.gateway.guard import error
from animllm_cli.gateway.scheduler import Lease

if TYPE_CHECKING:
    from animllm_cli.config.schema import AnimllmConfig
    from animllm_cli.gateway.metrics import GatewayMetrics
    from animllm_cli.gateway.pool import EnginePool


class Gateway(Protocol):
    """What the relay needs of the gateway (app.Gateway), without importing it."""

    session: aiohttp.ClientSession
    pool: EnginePool
    metrics: GatewayMetrics

    def engine_headers(self, model: str) -> dict[str, str]: ...

    def queue_failure(self, model: str, exc: Exception) -> Response: ...


@dataclass(frozen=True)
class Bounds:
    queue_s: float
    first_byte_s: float
    idle_s: float
    total_s: float | None

    @classmethod
    def from_config(cls, config: AnimllmConfig) -> "Bounds":
        limits = config.limits
        quiet = limits.request_timeout_s  # the seed's 300 s: no answer from the engine for this long
        return cls(queue_s=limits.queue_timeout_s or config.engine.start_timeout_s + quiet,
                   first_byte_s=limits.first_byte_timeout_s or quiet, idle_s=limits.idle_timeout_s or quiet,
                   total_s=limits.total_timeout_s)


class Expired(Exception):
    """A bound ran out; says which, for the 504 or the error event."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} ({seconds:g}s)")
        self.what, self.seconds = what, seconds


@dataclass
class Deadlines:
    bounds: Bounds
    end: float | None  # the loop time by which the whole request must be done (total_timeout_s)

    @classmethod
    def from_arrival(cls, bounds: Bounds) -> "Deadlines":
        now = asyncio.get_running_loop().time()
        return cls(bounds, now + bounds.total_s if bounds.total_s else None)

    async def within(self, awaitable: Awaitable[Any], seconds: float, what: str) -> Any:
        """Await with `seconds` as the bound (or the total's end, if sooner): Expired names it."""
        end = asyncio.get_running_loop().time() + seconds
        if self.end is not None and self.end < end:
            end, seconds, what = self.end, self.bounds.total_s or 0, "the whole request took longer than total_timeout_s"
        bound = asyncio.timeout_at(end)
        try:
            async with bound:
                return await awaitable
        except TimeoutError:
            if bound.expired():
                raise Expired(what, seconds) from None
            raise


def sse_error(message: str, kind: str) -> bytes:
    # A blank line first ends any event the upstream left half-written.
    return b"\n\ndata: " + json.dumps({"error": {"message": message, "type": kind}}).encode() + b"\n\n"


class ClientGone(Exception):
    pass


async def _disconnected(receive: Callable[[], Awaitable[dict]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def race_disconnect(receive: Callable[[], Awaitable[dict]], awaitable: Awaitable[Any],
                          discard: Callable[[Any], None] | None = None) -> Any:
    """Await `awaitable` unless the client goes away first (then cancel it: ClientGone).
    Should it finish anyway in the same turn (a queue slot granted just as the client
    left), `discard` gets the result, so that a lease is never lost."""
    main = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait({main, watch}, return_when=asyncio.FIRST_COMPLETED)
        if main in done:
            return main.result()
        main.cancel()
        try:
            result = await main
        except BaseException:
            pass
        else:
            if discard:
                discard(result)
        raise ClientGone()
    finally:
        watch.cancel()


async def forward(gw: Gateway, request: Request, model: str, lease: Lease, raw: bytes, stream: bool,
                  deadlines: Deadlines) -> Response:
    """Send the request to the model's engine; the lease is released when the answer ends."""
    engine = gw.pool.engine_for(model)
    gw.metrics.in_flight.inc()
    handed_over = False
    bounds = deadlines.bounds
    try:
        if engine is None:
            raise aiohttp.ClientConnectionError(f"no engine of '{model}' is ready")
        headers = {"content-type": "application/json", **gw.engine_headers(model)}
        send = gw.session.post(f"{engine.base_url}{request.url.path}", data=raw, headers=headers)
        upstream = await race_disconnect(
            request.receive, deadlines.within(send, bounds.first_byte_s, "no answer from the engine within "
                                                                          "first_byte_timeout_s"),
            discard=lambda response: response.close())
        if stream and upstream.status == 200:
            handed_over = True  # the streaming response owns the lease and the upstream from here
            return RelayResponse(gw, model, lease, upstream, deadlines)
        try:
            body = await race_disconnect(request.receive, deadlines.within(upstream.read(), bounds.idle_s,
                                                                            "the engine's answer stalled"))
        except BaseException:
            upstream.close()  # unread: drop the connection rather than return it to the pool
            raise
        gw.metrics.requests.labels(model, "ok" if upstream.status < 400 else f"http_{upstream.status}").inc()
        return Response(body, status_code=upstream.status,
                        media_type=upstream.headers.get("content-type", "application/json"))
    except Expired as exc:
        gw.metrics.requests.labels(model, "timeout").inc()
        return error(504, str(exc), "timeout")
    except ClientGone:  # the connection is closed with the upstream: vLLM aborts the request
        gw.metrics.requests.labels(model, "client_gone").inc()
        return Response(status_code=499)
    except aiohttp.ClientError as exc:
        gw.metrics.requests.labels(model, "engine_error").inc()
        return error(503, f"the engine for '{model}' failed while answering: {exc}", "engine_unavailable",
                     retry_after=5)
    finally:
        if not handed_over:
            gw.metrics.in_flight.dec()
            lease.release()


class RelayResponse(Response):
    """Streams the upstream's bytes as they arrive. Ends with an error event, never a
    fake [DONE], when the engine dies or a bound runs out; closes the upstream when the
    client goes away, so that vLLM stops generating."""

    def __init__(self, gw: Gateway, model: str, lease: Lease, upstream: aiohttp.ClientResponse,
                 deadlines: Deadlines) -> None:
        self.gw, self.model, self.lease, self.upstream, self.deadlines = gw, model, lease, upstream, deadlines
        self.status_code = upstream.status
        self.background = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.stream(receive, send, started=False)

    async def stream(self, receive: Any, send: Any, *, started: bool) -> None:
        """Relay the upstream's body; `started`: the response's head was sent already."""
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
            if not started:
                await send({"type": "http.response.start", "status": self.status_code,
                            "headers": [(b"content-type", upstream.headers.get("content-type", "text/event-stream").encode()),
                                        (b"cache-control", b"no-cache")]})
            try:
                await self._pump(send)
            except Expired as exc:
                outcome = "timeout"
                await send({"type": "http.response.body", "more_body": True, "body": sse_error(str(exc), "timeout")})
            except (aiohttp.ClientError, asyncio.IncompleteReadError):
                outcome = "client_gone" if gone else "engine_died"
                if not gone:
                    await send({"type": "http.response.body", "more_body": True,
                                "body": sse_error(f"the engine for '{self.model}' stopped mid-answer", "engine_error")})
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            upstream.close()
            self.gw.metrics.in_flight.dec()
            self.gw.metrics.requests.labels(self.model, "client_gone" if gone else outcome).inc()
            self.lease.release()

    async def _pump(self, send: Any) -> None:
        content, idle_s = self.upstream.content, self.deadlines.bounds.idle_s
        while True:
            chunk = await self.deadlines.within(content.readany(), idle_s, "no output from the engine within "
                                                                             "idle_timeout_s")
            if not chunk:
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not content.is_eof():
            raise aiohttp.ClientPayloadError("upstream closed early")


class WaitingStream(Response):
    """A streamed request whose model must be loaded first. The answer starts at once
    (200, an event stream), and while the request waits a comment line says what for,
    every `every_s` (`: loading coder, evicting vision… 12 s`): OpenAI clients skip
    comments, proxies see bytes flow instead of timing out, `chat` shows them. Then the
    engine's stream follows; a failure on the way is an error event, as mid-stream."""

    def __init__(self, gw: Gateway, request: Request, model: str, waiting: Awaitable[Lease], raw: bytes,
                 deadlines: Deadlines, describe: Callable[[], str], every_s: float) -> None:
        self.gw, self.request, self.model, self.raw, self.deadlines = gw, request, model, raw, deadlines
        self.waiting, self.describe, self.every_s = asyncio.ensure_future(waiting), describe, every_s
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        try:
            try:
                lease = await self._wait(receive, send)
            finally:
                if not self.waiting.done():  # left some other way (send failed, cancelled): leave the queue
                    self.waiting.cancel()
        except ClientGone:
            self.gw.metrics.requests.labels(self.model, "client_gone").inc()
            return
        except Exception as exc:
            failed = self.gw.queue_failure(self.model, exc)
            await self._end(send, _error_message(failed.body), "engine_unavailable")
            return
        answer = await forward(self.gw, self.request, self.model, lease, self.raw, True, self.deadlines)
        if isinstance(answer, RelayResponse):
            await answer.stream(receive, send, started=True)
        else:  # the engine refused it (4xx/5xx): its error as an event
            await self._end(send, _error_message(answer.body), "engine_error")

    async def _wait(self, receive: Any, send: Any) -> Lease:
        """The lease, saying what it waits for every `every_s`; ClientGone if the client leaves."""
        started = asyncio.get_running_loop().time()
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            while True:
                done, _ = await asyncio.wait({self.waiting, gone}, timeout=self.every_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                if self.waiting in done:
                    return self.waiting.result()
                if gone in done:
                    self.waiting.cancel()
                    with contextlib.suppress(BaseException):
                        (await self.waiting).release()  # granted in the same turn: give it back
                    raise ClientGone()
                waited = asyncio.get_running_loop().time() - started
                note = f": {self.describe()}\u2026 {waited:.0f} s\n\n"
                await send({"type": "http.response.body", "body": note.encode(), "more_body": True})
        finally:
            gone.cancel()

    async def _end(self, send: Any, message: str, kind: str) -> None:
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": sse_error(message, kind)[2:], "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _error_message(body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
        return error.get("message") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        return body.decode(errors="replace")[:500] or "the request failed"

"""Relay one request to the engine as raw bytes, and its answer back: streams chunk by
chunk as they arrive, errors as error events, never a fake [DONE].

Every wait has its own bound (gateway/deadlines.py). A client that goes away, queued or mid-answer, streamed or not, closes the upstream
connection, so that vLLM stops generating and the slot is freed.

A local engine that fails a request before the client got a byte (no connection, a
connection closed, a 5xx) is checked at once (gateway/pool.py, `check`). Dead, it either
had the request (`_had`: it read it all), and the client gets a 502 naming the crash; or
it may never have had it, and the request waits for the restart (EngineRestarting) as one
that arrives during a switch does, once: a request whose second try fails on a dead engine
too gets the 502. A stream that had begun ends with an error event naming the crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, Protocol

import aiohttp
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from animllm_cli.gateway.deadlines import Deadlines, Expired, IdleWatch
from animllm_cli.gateway import guard
from animllm_cli.gateway.dialects import OPENAI, Dialect, dialect_of
from animllm_cli.gateway.guard import error
from animllm_cli.gateway.scheduler import Lease

if TYPE_CHECKING:
    from animllm_cli.engine.supervisor import Engine
    from animllm_cli.gateway.metrics import GatewayMetrics
    from animllm_cli.gateway.upstreams import Upstream
    from animllm_cli.wire import EngineDeath

log = logging.getLogger(__name__)


class RelayHost(Protocol):
    """What the relay needs of the gateway that hosts it (app.Gateway), without importing it."""

    session: aiohttp.ClientSession
    metrics: GatewayMetrics

    def targets(self, model: str) -> Iterator[Target]: ...

    def queue_failure(self, model: str, exc: Exception) -> Response: ...

    async def engine_death(self, engine: Engine) -> EngineDeath | None: ...

    def why_not_served(self, path: str) -> str: ...


SENT_AT = "engine_sent_ns"  # request.state: when the relay last sent the request to its target (monotonic ns)
EVENT_ENDS = (b"\n\n", b"\r\n\r\n")  # the blank line that ends a server-sent event
# The scope's record of two `send`s (app.create_app): the server's own, and the one the route
# handed its response, with Starlette's middleware between them.
SERVER_SEND, ROUTE_SEND = "animllm.server_send", "animllm.route_send"


def split_at_event_end(data: bytes) -> tuple[bytes, bytes]:
    """`data` cut after its last complete event: (the whole events, the rest)."""
    if data.endswith(EVENT_ENDS):  # the usual read: whole events only, nothing to cut
        return data, b""
    end = max(data.rfind(mark) + len(mark) if mark in data else 0 for mark in EVENT_ENDS)
    return data[:end], data[end:]


def body_sender(scope: Any, send: Any) -> Any:
    """Where a streamed response's body goes: straight to the server where `send` is the one
    its route handed it (Starlette's middleware between them act on a response's start only,
    and passing each chunk through them cost the relay per chunk); through `send` where
    something else wraps it (accounting, Ollama's translation: they read the body)."""
    return scope.get(SERVER_SEND, send) if send is scope.get(ROUTE_SEND) else send


class ClientGone(Exception):
    pass


class EngineRestarting(Exception):
    """The request's engine was found dead, and the request may never have reached it: it
    waits for the restart, as one that arrives during a switch does, then is sent again
    with `rejoined` (it never waits for a second restart)."""


async def _disconnected(receive: Callable[[], Awaitable[dict]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def race_disconnect(receive: Callable[[], Awaitable[dict]], awaitable: Awaitable[Any],
                          discard: Callable[[Any], None] | None = None, *, gone: asyncio.Future | None = None,
                          bound: tuple[float, float, str] | None = None) -> Any:
    """Await `awaitable` unless the client goes away first (then cancel it: ClientGone), or
    `bound` (Deadlines.bound) runs out first (then cancel it: Expired naming it). Should it
    finish anyway in the same turn (a queue slot granted just as the client left),
    `discard` gets the result, so that a lease is never lost. `gone`: the request's watch of
    `receive` (client_watch), kept running for the caller; else one of its own. (asyncio.wait
    and a timeout context, which this was, cost twice the time of the waiter and timer
    below: they are on the path of every request.)"""
    main = asyncio.ensure_future(awaitable)
    watch = gone if gone is not None else client_watch(receive)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake(_: Any = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    main.add_done_callback(wake)
    watch.add_done_callback(wake)
    timer = loop.call_at(bound[0], wake) if bound is not None else None
    try:
        try:
            await waiter
        finally:
            main.remove_done_callback(wake)
            watch.remove_done_callback(wake)
            if timer is not None:
                timer.cancel()
        if main.done():
            return main.result()
        main.cancel()
        try:
            result = await main
        except BaseException:
            pass
        else:
            if discard:
                discard(result)
        if watch.done() or bound is None:
            raise ClientGone()
        raise Expired(bound[2], bound[1])
    finally:
        if gone is None:
            watch.cancel()


def client_watch(receive: Callable[[], Awaitable[dict]]) -> asyncio.Future:
    """A task that ends when the client goes away (its `receive` says http.disconnect); one
    per request, from the race for the upstream's answer through the stream (a task made
    and cancelled costs the relay per request)."""
    return asyncio.ensure_future(_disconnected(receive))


@dataclass
class Target:
    """Where one try of a request goes: the model's own engine, or one URL of its upstream."""
    base_url: str
    headers: dict[str, str] = field(repr=False)  # a key: never in a repr or a log
    who: str                                  # in messages: "the engine for 'coder'", "upstream https://h of 'big'"
    tls: ssl.SSLContext | bool = True         # True: aiohttp's default verification
    connect_s: float | None = None            # None: the session's
    first_byte_s: float | None = None         # None: the gateway's bound
    idle_s: float | None = None
    upstream: Upstream | None = None          # a remote URL: its outstanding count and health
    key_env: str | None = None                # the variable its key came from (for messages)
    engine: Engine | None = None              # a local engine: asked whether it died when it fails

    def mark_out(self, problem: str) -> None:
        """A remote URL that failed leaves rotation until its health check passes (a local
        engine's death is its supervisor's to judge)."""
        if self.upstream is not None:
            self.upstream.mark_failed(problem)

    def failed(self, problem: str, cause: aiohttp.ClientError | None = None, *, mid_answer: bool = False) -> "Failover":
        """This try failed before the client got a byte: out of rotation, and the next URL's turn."""
        self.mark_out(problem)
        return Failover(f"{self.who}: {problem}" if self.upstream else f"{self.who} failed while answering: {problem}",
                        cause, mid_answer)


class Failover(Exception):
    """A try that failed before anything reached the client: another URL may answer.
    `cause`: the connection's error (None: an error answer); `mid_answer`: it failed within
    the body of its answer."""

    def __init__(self, message: str, cause: aiohttp.ClientError | None, mid_answer: bool) -> None:
        super().__init__(message)
        self.cause, self.mid_answer = cause, mid_answer


# What vLLM's FastAPI answers for a route it has not registered (from 0.16 it registers each
# API only for the models that serve it: /pooling for a chat model, say).
ROUTE_NOT_FOUND = b'{"detail":"Not Found"}'
# An upstream answering these is overloaded, restarting or a proxy without a backend. Not
# 504: a proxy's timeout on a long generation says nothing about the server, and running
# the whole generation again elsewhere would double it.
FAILOVER_STATUSES = frozenset({502, 503})
# The upstream refused our key for it: the client's own key was fine, so not a 401 to it.
KEY_REFUSED_STATUSES = frozenset({401, 403, 407})


async def forward(gw: RelayHost, request: Request, model: str, lease: Lease, raw: bytes, stream: bool,
                  deadlines: Deadlines, *, rejoined: bool = False) -> Response:
    """Send the request to the model's engine, or to its upstream URLs one after another
    until one answers (a failover only while nothing has reached the client); the lease
    is released when the answer ends. `rejoined`: it waited for a restart already, so a
    dead engine gives it the crash, never EngineRestarting."""
    gw.metrics.in_flight.inc()
    handed_over = False
    failures: list[str] = []
    try:
        for target in gw.targets(model):
            if failures:
                gw.metrics.failovers.labels(model).inc()
            try:
                answer = await _attempt(gw, request, model, target, lease, raw, stream, deadlines)
            except Failover as exc:
                log.warning("%s", exc)
                if target.engine is not None:  # the model's one engine: did it die?
                    return await _engine_failed(gw, model, target, exc, rejoined)
                failures.append(str(exc))
                continue
            handed_over = isinstance(answer, RelayResponse)
            return answer
        gw.metrics.requests.labels(model, "engine_error").inc()
        message = "; ".join(failures) if failures else f"no engine of '{model}' is ready"
        return error(503, message, "engine_unavailable", retry_after=5)
    except Expired as exc:
        gw.metrics.requests.labels(model, "timeout").inc()
        return error(504, str(exc), "timeout")
    except ClientGone:  # the connection is closed with the upstream: vLLM aborts the request
        gw.metrics.requests.labels(model, "client_gone").inc()
        return Response(status_code=499)
    finally:
        if not handed_over:
            gw.metrics.in_flight.dec()
            lease.release()


async def _engine_failed(gw: RelayHost, model: str, target: Target, failure: Failover, rejoined: bool) -> Response:
    """A local engine failed the request before the client got a byte. Alive after all: a
    503, as ever. Dead: a 502 naming the crash if it had the request (`_had`), or if the
    request waited for a restart already; else EngineRestarting, and the request waits
    for the restart."""
    assert target.engine is not None
    death = await gw.engine_death(target.engine)
    if death is None:
        gw.metrics.requests.labels(model, "engine_error").inc()
        return error(503, str(failure), "engine_unavailable", retry_after=5)
    had = _had(failure)
    if not had and not rejoined:
        raise EngineRestarting()
    gw.metrics.requests.labels(model, "engine_died").inc()
    when = "while answering" if had else "again, after the restart this request waited for"
    return error(502, f"{target.who} died {when}: {death.summary()}", "engine_error")


def _had(failure: Failover) -> bool:
    """Whether an engine found dead had the request when it died: whether it had read it all.
    An engine that dies closes each connection it holds: cleanly where it had read what was
    sent (aiohttp's ServerDisconnectedError), with a reset where the request lay unread (the
    kernel resets a connection closed with data unread: a request sent while the engine was
    being killed, or into its listening socket's backlog). A connection refused never
    reached it; an answer that broke off had begun. An error answer says nothing of when it
    died: vLLM answers 500 to every request once its EngineCore is gone, those sent after the
    death too (a request that killed it, an out-of-memory on its prompt, is failed again by
    the restarted engine, and gets the crash then)."""
    return failure.mid_answer or isinstance(failure.cause, aiohttp.ServerDisconnectedError)


async def _attempt(gw: RelayHost, request: Request, model: str, target: Target, lease: Lease, raw: bytes,
                   stream: bool, deadlines: Deadlines) -> Response:
    """One try at one target. Failover: it failed before the client got anything."""
    bounds, remote = deadlines.bounds, target.upstream
    first_byte_s, idle_s = target.first_byte_s or bounds.first_byte_s, target.idle_s or bounds.idle_s
    if remote is not None:
        remote.outstanding += 1
        remote.sent += 1
    handed_over = False
    gone = client_watch(request.receive)
    try:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=target.connect_s) if target.connect_s else None
        # Never a redirect: the target's key must not follow it to another host.
        # The client's content type: JSON, or a multipart form with its boundary.
        media = request.headers.get("content-type", "application/json")
        setattr(request.state, SENT_AT, time.monotonic_ns())
        path = guard.path_of(request)
        send = gw.session.post(f"{target.base_url}{path}", data=raw, allow_redirects=False,
                               headers={"content-type": media, **target.headers}, ssl=target.tls,
                               **({"timeout": timeout} if timeout else {}))
        try:
            upstream = await race_disconnect(
                request.receive, send, discard=lambda response: response.close(), gone=gone,
                bound=deadlines.bound(first_byte_s, f"no answer from {target.who} within first_byte_timeout_s"))
        except aiohttp.ClientError as exc:
            raise target.failed(_cause(exc), exc) from None
        if remote is not None and upstream.status in KEY_REFUSED_STATUSES:
            upstream.close()  # every URL of the model has the same key: no failover
            target.mark_out(f"refused the key (HTTP {upstream.status})")
            gw.metrics.requests.labels(model, "upstream_key_refused").inc()
            return error(502, f"{target.who} refused the key (HTTP {upstream.status}): check the variable "
                              f"{target.key_env or '(none: upstream.api_key_env is not set)'}", "upstream_error")
        if remote is not None and (upstream.status in FAILOVER_STATUSES or 300 <= upstream.status < 400):
            upstream.close()
            where = f" to {upstream.headers.get('location')}; animllm never follows a redirect" \
                if upstream.status < 400 else ""
            raise target.failed(f"HTTP {upstream.status}{where}")
        watch = _answer_watch(request, model, target) if upstream.status == 200 else None
        if stream and upstream.status == 200:
            handed_over = True  # the streaming response owns the lease and the upstream from here
            return RelayResponse(gw, model, lease, upstream, deadlines, target, idle_s, dialect_of(path), watch, gone)
        try:
            body = await race_disconnect(request.receive, upstream.read(), gone=gone,
                                         bound=deadlines.bound(idle_s, f"{target.who}'s answer stalled"))
        except aiohttp.ClientError as exc:
            upstream.close()
            raise target.failed(f"stopped mid-answer: {_cause(exc)}", exc, mid_answer=True) from None
        except BaseException:
            upstream.close()  # unread: drop the connection rather than return it to the pool
            raise
        if target.engine is not None and upstream.status == 404 and body.strip() == ROUTE_NOT_FOUND:
            gw.metrics.requests.labels(model, "http_404").inc()
            return error(404, f"{target.who} does not serve {request.url.path}: {gw.why_not_served(request.url.path)}",
                         code="route_not_served")
        if target.engine is not None and upstream.status >= 500 \
                and await gw.engine_death(target.engine) is not None:  # vLLM's answer once its EngineCore died
            raise target.failed(f"HTTP {upstream.status}")
        if watch is not None:
            watch(body)
        gw.metrics.count(model, "ok" if upstream.status < 400 else f"http_{upstream.status}")
        retry = upstream.headers.get("retry-after")
        return Response(body, status_code=upstream.status, headers={"retry-after": retry} if retry else None,
                        media_type=upstream.headers.get("content-type", "application/json"))
    finally:
        if not handed_over:
            gone.cancel()
            if remote is not None:
                remote.outstanding -= 1


async def relay_by_id(gw: Any, request: Request, target: Target) -> Response:
    """A request that names no model but an object one engine holds (a stored response: its
    GET, its cancel), sent to that engine (or upstream URL) as it came, outside the
    scheduler: it generates nothing (a streamed GET replays what the engine generates for
    the original request, whose own slot counts it)."""
    body = await guard.read_body(request, gw.max_body_bytes)
    url = f"{target.base_url}{request.url.path}" + (f"?{request.url.query}" if request.url.query else "")
    headers = {**target.headers, **({"content-type": "application/json"} if body else {})}
    try:
        upstream = await asyncio.wait_for(gw.session.request(request.method, url, data=body or None, headers=headers,
                                                             allow_redirects=False, ssl=target.tls),
                                          gw.bounds.first_byte_s)
    except aiohttp.ClientError as exc:
        return error(502, f"{target.who} failed: {_cause(exc)}", "engine_error")
    except asyncio.TimeoutError:
        return error(504, f"no answer from {target.who} within first_byte_timeout_s", "timeout")
    media = upstream.headers.get("content-type", "application/json")
    if media.startswith("text/event-stream"):
        return StreamingResponse(_replay(upstream, target), status_code=upstream.status, media_type=media)
    try:
        return Response(await asyncio.wait_for(upstream.read(), gw.bounds.idle_s), status_code=upstream.status,
                        media_type=media)
    except aiohttp.ClientError as exc:
        return error(502, f"{target.who} stopped mid-answer: {_cause(exc)}", "engine_error")
    except asyncio.TimeoutError:
        return error(504, f"{target.who}'s answer stalled (idle_timeout_s)", "timeout")
    finally:
        upstream.close()


async def _replay(upstream: aiohttp.ClientResponse, target: Target) -> Any:
    """A streamed GET's events as they come; an error event if the stream breaks off."""
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
    except aiohttp.ClientError as exc:
        yield OPENAI.stream_error(f"{target.who} stopped mid-answer: {_cause(exc)}", "engine_error")
    finally:
        upstream.close()


def _answer_watch(request: Request, model: str, target: Target) -> Callable[[bytes], bool] | None:
    """What reads an answer on its way (the route sets `request.state.answer_watch`: the
    Responses API's ids, gateway/stored_responses.py); None for most routes."""
    watcher = request.scope.get("state", {}).get("answer_watch")  # request.state's: without its AttributeError
    return watcher(model, target) if watcher is not None else None


def _cause(exc: aiohttp.ClientError) -> str:
    """What went wrong, in words: aiohttp's own text names the SSL context object."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"certificate of {exc.host} not accepted: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    return str(exc) or type(exc).__name__


class RelayResponse(Response):
    """Streams the upstream's bytes as they arrive. Ends with an error event, never a
    fake [DONE], when the engine dies or a bound runs out; closes the upstream when the
    client goes away, so that vLLM stops generating."""

    def __init__(self, gw: RelayHost, model: str, lease: Lease, upstream: aiohttp.ClientResponse,
                 deadlines: Deadlines, target: Target, idle_s: float, dialect: Dialect = OPENAI,
                 watch: Callable[[bytes], bool] | None = None, gone: asyncio.Future | None = None) -> None:
        """`watch`: called with each run of whole events until it returns True (_answer_watch);
        `gone`: the request's client_watch, which the response owns from here (None: its own)."""
        self.gw, self.model, self.lease, self.upstream, self.deadlines = gw, model, lease, upstream, deadlines
        self.target, self.idle_s, self.dialect, self.watch, self.gone = target, idle_s, dialect, watch, gone
        self.status_code = upstream.status
        self.background = None
        self.given_back = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.stream(receive, send, started=False, body_send=body_sender(scope, send))

    async def stream(self, receive: Any, send: Any, *, started: bool, body_send: Any = None) -> None:
        """Relay the upstream's body; `started`: the response's head was sent already;
        `body_send`: where the events go (body_sender; None: `send`)."""
        upstream = self.upstream
        gone = False

        def left(watch: asyncio.Future) -> None:
            nonlocal gone
            if not watch.cancelled() and watch.exception() is None:
                gone = True
                upstream.close()  # drops the connection: vLLM aborts the request

        watcher = self.gone or client_watch(receive)
        watcher.add_done_callback(left)
        outcome = "ok"
        try:
            if not started:
                await send({"type": "http.response.start", "status": self.status_code,
                            "headers": [(b"content-type", upstream.headers.get("content-type", "text/event-stream").encode()),
                                        (b"cache-control", b"no-cache")]})
            ended = False
            try:
                # Straight to the server, the answer's last events carry its end: one write less.
                ended = await self._pump(body_send or send, may_end=body_send is not None and body_send is not send)
            except Expired as exc:
                outcome = "timeout"
                await send({"type": "http.response.body", "more_body": True,
                            "body": self.dialect.stream_error(str(exc), "timeout")})
            except (aiohttp.ClientError, asyncio.IncompleteReadError):
                outcome = "client_gone" if gone else "engine_died"
                if not gone:
                    self.target.mark_out("stopped mid-answer")
                    self._give_back()  # before the check of its engine, which may take seconds
                    await send({"type": "http.response.body", "more_body": True,
                                "body": self.dialect.stream_error(await self._cut_short(), "engine_error")})
            if not ended:
                with contextlib.suppress(OSError):
                    await (body_send or send)({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.remove_done_callback(left)
            watcher.cancel()
            upstream.close()
            if self.target.upstream is not None:
                self.target.upstream.outstanding -= 1
            self.gw.metrics.count(self.model, "client_gone" if gone else outcome)
            self._give_back()

    def _give_back(self) -> None:
        """Its slot and its place in the in-flight count, given back once."""
        if not self.given_back:
            self.given_back = True
            self.gw.metrics.in_flight.dec()
            self.lease.release()

    async def _cut_short(self) -> str:
        """Why the stream ended early, for its error event: the crash, where its engine died."""
        engine = self.target.engine
        death = await self.gw.engine_death(engine) if engine is not None else None
        return f"{self.target.who} stopped mid-answer" + (f": it died ({death.summary()})" if death else "")

    async def _pump(self, send: Any, *, may_end: bool = False) -> bool:
        """Relay whole events only: what follows the last event boundary waits for the rest of
        its event, so that an engine dying inside a write never hands the client half an event
        (an SDK fails on one it cannot parse before it reaches the error event). `may_end`:
        events read with the upstream's end (nothing left to read) go as the response's end
        (True: it has ended)."""
        content, deadlines = self.upstream.content, self.deadlines
        watch = IdleWatch(deadlines, self.idle_s, f"no output from {self.target.who} within idle_timeout_s")
        time, read, ends = watch.loop.time, content.readany, EVENT_ENDS
        total_bound = deadlines.end is not None
        pending = b""
        try:
            while True:
                watch.reading_since = time()
                if total_bound and (overdue := deadlines.overdue(watch.reading_since)) is not None:
                    raise overdue  # it may have passed during a send
                try:
                    chunk = await read()
                except asyncio.CancelledError:
                    watch.cancelled()
                    raise
                watch.reading_since = None
                if not chunk:
                    break
                if pending or not chunk.endswith(ends):  # an event cut by the read: its start waits
                    chunk, pending = split_at_event_end(pending + chunk)
                    if not chunk:
                        continue
                if self.watch is not None and self.watch(chunk):
                    self.watch = None
                if may_end and not pending and content.at_eof():
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
                    return True
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            watch.close()
        if not content.is_eof():
            raise aiohttp.ClientPayloadError("upstream closed early")
        if pending:  # a complete answer whose last event lacks its blank line: passed on as it is
            await send({"type": "http.response.body", "body": pending, "more_body": True})
        return False


class WaitingStream(Response):
    """A streamed request whose model must be loaded (or restarted) first. The answer
    starts at once (200, an event stream), and while the request waits a comment line says
    what for, every `every_s` (`: loading coder, evicting vision… 12 s`): OpenAI clients
    skip comments, proxies see bytes flow instead of timing out, `chat` shows them. Then
    the engine's stream follows; a failure on the way is an error event, as mid-stream.
    `acquire` waits for the slot; it is asked again, once, when the engine turns out to have
    died before the request reached it (EngineRestarting). `rejoined`: it waits for a
    restart already."""

    def __init__(self, gw: RelayHost, request: Request, model: str, acquire: Callable[[], Awaitable[Lease]],
                 raw: bytes, deadlines: Deadlines, describe: Callable[[], str], every_s: float,
                 rejoined: bool = False) -> None:
        self.gw, self.request, self.model, self.raw, self.deadlines = gw, request, model, raw, deadlines
        self.acquire, self.describe, self.every_s, self.rejoined = acquire, describe, every_s, rejoined
        self.waiting = asyncio.ensure_future(acquire())  # in the queue from now on
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        while (lease := await self._lease(receive, send)) is not None:
            try:
                answer = await forward(self.gw, self.request, self.model, lease, self.raw, True, self.deadlines,
                                       rejoined=self.rejoined)
            except EngineRestarting:  # it waits for the restart, hearing what it waits for
                self.rejoined = True
                self.waiting = asyncio.ensure_future(self.acquire())
                continue
            if isinstance(answer, RelayResponse):
                await answer.stream(receive, send, started=True, body_send=body_sender(scope, send))
            else:  # the engine refused it (4xx/5xx): its error as an event
                await self._end(send, _error_message(answer.body), "engine_error")
            return

    async def _lease(self, receive: Any, send: Any) -> Lease | None:
        """The slot; None when the wait ended otherwise (the client left, or its error event is sent)."""
        try:
            try:
                return await self._wait(receive, send)
            finally:
                if not self.waiting.done():  # left some other way (send failed, cancelled): leave the queue
                    self.waiting.cancel()
        except ClientGone:
            self.gw.metrics.requests.labels(self.model, "client_gone").inc()
        except Exception as exc:
            failed = self.gw.queue_failure(self.model, exc)  # its kind: timeout, server_busy, engine_unavailable
            await self._end(send, _error_message(failed.body), getattr(failed, "kind", "engine_unavailable"))
        return None

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
            event = dialect_of(self.request.url.path).stream_error(message, kind)[2:]  # nothing half-written to end
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _error_message(body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
        return error.get("message") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        return body.decode(errors="replace")[:500] or "the request failed"

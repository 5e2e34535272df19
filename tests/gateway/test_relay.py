"""A stream its engine cut short (gateway/relay.py, RelayResponse): its slot and the
in-flight count are given back before the check of the engine that its error event waits
for (a check may take seconds), and once only. No engine, no HTTP: the upstream is a stub."""

from __future__ import annotations

import asyncio

import aiohttp

from animllm_cli.gateway.deadlines import Bounds, Deadlines
from animllm_cli.gateway.metrics import GatewayMetrics
from animllm_cli.gateway.relay import RelayResponse, Target
from animllm_cli.gateway.scheduler import Lease


class CutShort:
    """An upstream answer whose stream breaks before its first event."""
    status = 200
    headers: dict[str, str] = {}

    def __init__(self) -> None:
        self.content = self

    async def readany(self) -> bytes:
        raise aiohttp.ClientPayloadError("upstream closed early")

    def is_eof(self) -> bool:
        return False

    def close(self) -> None:
        pass


class Slots:
    """The scheduler, as a lease sees it: counts the slots given back."""

    def __init__(self) -> None:
        self.freed = 0

    def _release(self, lease: Lease) -> None:
        self.freed += 1


def test_a_stream_cut_short_frees_its_slot_before_its_engine_is_checked_and_once() -> None:
    async def scenario() -> None:
        checking, checked = asyncio.Event(), asyncio.Event()
        metrics = GatewayMetrics()

        class Host:
            async def engine_death(self, engine: object) -> None:
                checking.set()
                await checked.wait()

        host = Host()
        host.metrics = metrics  # type: ignore[attr-defined]
        slots = Slots()
        metrics.in_flight.inc()  # as `forward` counts the request
        target = Target("http://127.0.0.1:1", {}, "the engine for 'a'", engine=object())  # type: ignore[arg-type]
        deadlines = Deadlines.from_arrival(Bounds(queue_s=5, first_byte_s=5, idle_s=5, total_s=None))
        lease = Lease("a", slots)  # type: ignore[arg-type]
        response = RelayResponse(host, "a", lease, CutShort(), deadlines, target, 5)  # type: ignore[arg-type]
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        async def receive() -> dict:
            await asyncio.Event().wait()  # the client stays
            return {}

        streaming = asyncio.create_task(response.stream(receive, send, started=True))
        await checking.wait()
        assert slots.freed == 1 and metrics.registry.get_sample_value("animllm_in_flight") == 0
        checked.set()
        await streaming
        assert slots.freed == 1 and metrics.registry.get_sample_value("animllm_in_flight") == 0
        assert b"the engine for 'a' stopped mid-answer" in sent[-2]["body"]

    asyncio.run(scenario())


class Stream:
    """An upstream answer that streams `reads` (what each read returns) and then ends;
    `end_with_last`: its end arrives with its last read (aiohttp then knows it at once)."""
    status = 200
    headers = {"content-type": "text/event-stream"}

    def __init__(self, reads: list[bytes], end_with_last: bool) -> None:
        self.content, self.reads, self.end_with_last, self.closed = self, list(reads), end_with_last, 0

    async def readany(self) -> bytes:
        await asyncio.sleep(0)
        return self.reads.pop(0) if self.reads else b""

    def is_eof(self) -> bool:
        return not self.reads

    def at_eof(self) -> bool:
        return not self.reads and self.end_with_last

    def close(self) -> None:
        self.closed += 1


EVENTS = [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\ndata: {"n"', b': 3}\n\n', b"data: [DONE]\n\n"]


def _relay(upstream: Stream, *, wrapped: bool) -> tuple[list[dict], list[dict]]:
    """The messages a RelayResponse sent through the route's `send` and straight to the
    server's, called as app.create_app calls it (wrapped: through a reader of the body, as
    accounting and Ollama's translation are)."""
    from animllm_cli.gateway.relay import ROUTE_SEND, SERVER_SEND

    async def scenario() -> tuple[list[dict], list[dict]]:
        host = type("Host", (), {"metrics": GatewayMetrics()})()
        host.metrics.in_flight.inc()
        deadlines = Deadlines.from_arrival(Bounds(queue_s=5, first_byte_s=5, idle_s=5, total_s=None))
        response = RelayResponse(host, "a", Lease("a", Slots()), upstream, deadlines,  # type: ignore[arg-type]
                                 Target("http://127.0.0.1:1", {}, "the engine for 'a'"), 5)
        routed, direct = [], []

        async def route_send(message: dict) -> None:
            routed.append(message)

        async def server_send(message: dict) -> None:
            direct.append(message)

        async def reader(message: dict) -> None:  # accounting's, Ollama's: it reads the body
            await route_send(message)

        async def receive() -> dict:
            await asyncio.Event().wait()  # the client stays
            return {}

        scope = {ROUTE_SEND: route_send, SERVER_SEND: server_send}
        await response(scope, receive, reader if wrapped else route_send)
        return routed, direct

    return asyncio.run(scenario())


def _body(messages: list[dict]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def test_a_stream_passes_starlettes_middleware_by_for_its_body_and_ends_with_its_last_events() -> None:
    """The route's own `send`: the head through it (Starlette's middleware note that the
    response started), the events straight to the server, whole events only, the last with
    the response's end (one write less) when the upstream's end came with them."""
    routed, direct = _relay(Stream(EVENTS, end_with_last=True), wrapped=False)
    assert [m["type"] for m in routed] == ["http.response.start"]
    assert _body(direct) == b"".join(EVENTS)
    assert [m["body"] for m in direct] == [EVENTS[0], b'data: {"n": 2}\n\n', b'data: {"n": 3}\n\n', EVENTS[3]]
    assert [m["more_body"] for m in direct] == [True, True, True, False]


def test_a_stream_whose_end_comes_apart_ends_with_an_empty_message() -> None:
    routed, direct = _relay(Stream(EVENTS, end_with_last=False), wrapped=False)
    assert _body(direct) == b"".join(EVENTS) and direct[-1] == {"type": "http.response.body", "body": b"",
                                                               "more_body": False}
    assert [m["more_body"] for m in direct] == [True, True, True, True, False]


def test_a_stream_someone_reads_goes_through_them_all_of_it_as_before() -> None:
    """Wrapped (accounting, Ollama's translation): every message through the wrapper, and
    the end apart, as the wrapper has always seen it."""
    routed, direct = _relay(Stream(EVENTS, end_with_last=True), wrapped=True)
    assert direct == [] and routed[0]["type"] == "http.response.start"
    assert _body(routed) == b"".join(EVENTS) and routed[-1]["body"] == b"" and routed[-1]["more_body"] is False


def test_events_are_cut_at_their_last_end_as_the_plain_rule_cuts_them() -> None:
    """split_at_event_end's shortcut for a read of whole events gives what the rule gives."""
    import itertools

    from animllm_cli.gateway.relay import EVENT_ENDS, split_at_event_end

    def rule(data: bytes) -> tuple[bytes, bytes]:
        end = max(data.rfind(mark) + len(mark) if mark in data else 0 for mark in EVENT_ENDS)
        return data[:end], data[end:]

    for size in range(7):
        for parts in itertools.product([b"a", b"\n", b"\r"], repeat=size):
            data = b"".join(parts)
            assert split_at_event_end(data) == rule(data), data

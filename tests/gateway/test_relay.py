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

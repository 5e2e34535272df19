"""The ceiling of one gateway process: the most streamed chunks a second it relays on one
core, beside the minimal relay (benchmarks/minimal_relay.py, the floor) in the same run.

Each relay is pinned to one core of its own (the last one); the upstream (the fake vLLM of
tests/fakes, paced at 2 ms a chunk, in its own process, configured as the gateway's remote
`upstream:`) and this load generator share the others (core 0 on a 2-core machine). For
1, 4, 16, 64 and 256 streams at once (each stream 64 chunks, a new one started as one
ends), rounds of a few seconds alternate between the gateway and the minimal relay. Per
relay and streams: the chunks a second the clients got, the share of its core the relay
used, and chunks per CPU-second (what one core would relay if the relay had it all: the
ceiling where the load side, not the relay, set the pace). The ratio is the gateway's
over the minimal relay's; on a shared machine compare the ratio, never the figures.

Usage: .venv/bin/python benchmarks/relay_ceiling.py [--streams 1,4,16,64,256] [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import alternating_rounds, body, cpu_s, relays_before_paced_upstream  # noqa: E402

TOKENS = 64


def cores() -> tuple[set[int], set[int]]:
    """(the relay's core, the load's cores): the last core for the relay, the rest for the
    upstream and the load generator; with one core, all on it."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return set(allowed), set(allowed)
    return {allowed[-1]}, set(allowed[:-1])


def pin(pid: int, where: set[int]) -> None:
    """Every thread of `pid` on `where` (threads it starts later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), where)
        except OSError:  # a thread that ended meanwhile
            pass


async def one_stream(session: aiohttp.ClientSession, url: str, payload: bytes) -> int:
    """The chunks (events, [DONE] aside) of one stream, counted in what arrives: a client
    as cheap as can be, so that the load side leaves the relay its core's worth of work."""
    count = 0
    async with session.post(f"{url}/v1/chat/completions", data=payload,
                            headers={"content-type": "application/json"}) as resp:
        assert resp.status == 200, resp.status
        async for data in resp.content.iter_any():
            count += data.count(b"data: ")
    return count - 1  # data: [DONE]


async def load_round(session: aiohttp.ClientSession, url: str, pid: int, streams: int, seconds: float) -> dict:
    """`streams` streams at once for `seconds` (each replaced as it ends): chunks a second,
    and the relay's CPU over the same time."""
    payload = body(TOKENS, True)
    stop = time.monotonic() + seconds
    counts = [0] * streams

    async def worker(i: int) -> None:
        while time.monotonic() < stop:
            counts[i] += await one_stream(session, url, payload)

    before, started = cpu_s(pid), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(streams)))
    wall, cpu = time.perf_counter() - started, cpu_s(pid) - before
    chunks = sum(counts)
    return {"chunks_per_s": chunks / wall, "core_share": cpu / wall, "chunks_per_cpu_s": chunks / cpu if cpu else 0.0}


async def measure(relays: dict[str, tuple[str, int]], levels: list[int], rounds: int, seconds: float) -> dict:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        results = await alternating_rounds(session, relays, levels, rounds,
                                           lambda s, url, pid, streams: load_round(s, url, pid, streams, seconds),
                                           lambda s, url, pid: load_round(s, url, pid, 8, 1.0))
    for streams, by_relay in results.items():
        print_row(streams, by_relay)
    return results


HEADER = (f"{'streams':>7}  {'minimal chunks/s':>16} {'core':>5} {'per CPU-s':>9}  "
          f"{'gateway chunks/s':>16} {'core':>5} {'per CPU-s':>9}  {'ratio':>5} {'CPU ratio':>9}")


def print_row(streams: int, by_relay: dict[str, dict]) -> None:
    minimal, gateway = by_relay["minimal"], by_relay["gateway"]
    ratio = gateway["chunks_per_s"] / minimal["chunks_per_s"]
    cpu_ratio = gateway["chunks_per_cpu_s"] / minimal["chunks_per_cpu_s"] if minimal["chunks_per_cpu_s"] else 0.0
    print(f"{streams:>7}  {minimal['chunks_per_s']:>16.0f} {100 * minimal['core_share']:>4.0f}% "
          f"{minimal['chunks_per_cpu_s']:>9.0f}  {gateway['chunks_per_s']:>16.0f} {100 * gateway['core_share']:>4.0f}% "
          f"{gateway['chunks_per_cpu_s']:>9.0f}  {ratio:>5.2f} {cpu_ratio:>9.2f}", flush=True)


def print_summary(results: dict[int, dict[str, dict]]) -> None:
    for name in ("gateway", "minimal"):
        streams, best = max(((s, r[name]) for s, r in results.items()), key=lambda item: item[1]["chunks_per_s"])
        print(f"ceiling, {name + (' relay' if name == 'minimal' else ''):<13} {best['chunks_per_s']:>7.0f} chunks/s "
              f"at {streams} streams ({100 * best['core_share']:.0f}% of its core); "
              f"{max(r[name]['chunks_per_cpu_s'] for r in results.values()):.0f} chunks per CPU-second at best")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="1,4,16,64,256", help="streams at once, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per relay and level, alternating")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one round")
    args = parser.parse_args()
    levels = [int(level) for level in args.streams.split(",")]
    relay_core, load_cores = cores()
    os.sched_setaffinity(0, load_cores)  # the upstream started below inherits it
    print(f"relay ceiling: {os.cpu_count()} CPUs; gateway and minimal relay each pinned to core "
          f"{min(relay_core)}, upstream (fake vLLM, 2 ms a chunk) and load generator on "
          f"{','.join(map(str, sorted(load_cores)))}; {TOKENS}-chunk streams, {args.rounds} rounds of "
          f"{args.seconds:g}s each, alternating")
    print(HEADER)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        # As many at once as the most streams: the gateway relays them all, none waits in its queue.
        with relays_before_paced_upstream(directory, "ceiling", concurrency=max(levels)) as relays:
            for _, pid in relays.values():
                pin(pid, relay_core)
            results = asyncio.run(measure(relays, levels, args.rounds, args.seconds))
    print_summary(results)


if __name__ == "__main__":
    main()

"""The load generator's ceiling: how many streamed chunks per second `animllm bench`'s
generator consumes on ONE core, against the fast fake upstream on the other.

Target (issue 7): at least 5,000 chunks/s, so that the generator is never what a
benchmark measures. Usage: .venv/bin/python benchmarks/bench_generator.py
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from animllm_cli.bench import loadgen  # noqa: E402
from animllm_cli.bench.metrics import LevelSummary, summarize  # noqa: E402

TARGET = 5000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def measure(url: str, concurrency: int, requests: int, output_len: int) -> tuple[float, LevelSummary]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        request = loadgen.Request(loadgen.COMPLETIONS, loadgen.completion_body("m", list(range(32)), output_len), "m")
        await loadgen.run_level(session, url, [request] * 4, concurrency=4)  # warm up
        samples, duration = await loadgen.run_level(session, url, [request] * requests, concurrency=concurrency)
    chunks = sum(len(s.itl) + 1 for s in samples if s.ok)
    return chunks / duration, summarize(samples, duration)


def main() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAKE_VLLM_MODE": "ok"}
    fake = subprocess.Popen([sys.executable, "-m", "tests.fakes.fake_vllm", "--model", "m", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if len(cpus) > 1:
            os.sched_setaffinity(fake.pid, {cpus[-1]})
            os.sched_setaffinity(0, {cpus[0]})  # the generator gets one core
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        print(f"load generator on CPU {cpus[0]} only, fake upstream on CPU {cpus[-1]}")
        print(f"{'concurrency':>11} {'requests':>9} {'chunks/s':>10}  target >= {TARGET}")
        for concurrency, requests in ((1, 20), (16, 64), (64, 128)):
            rate, summary = asyncio.run(measure(url, concurrency, requests, 256))
            verdict = "met" if rate >= TARGET else "MISSED"
            print(f"{concurrency:>11} {requests:>9} {rate:>10.0f}  {verdict} "
                  f"(completed {summary.completed}, failed {summary.failed})")
    finally:
        fake.terminate()
        fake.wait(timeout=10)


if __name__ == "__main__":
    main()

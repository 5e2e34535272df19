"""The gateway bench's tests run against: fake engines (paced at 2 ms a chunk), the
config's expectations for profile p, and ANIMLLM_CONFIG pointing at it."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.gateway.harness import RunningGateway, fake_gateway_config, start_gateway


@contextlib.contextmanager
def bench_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expectations: str,
                  **config: Any) -> Iterator[RunningGateway]:
    path = fake_gateway_config(tmp_path, chunk_delay=0.002, **config)
    path.write_text(path.read_text() + f"expectations: {{p: {expectations}}}\n")
    monkeypatch.setenv("ANIMLLM_CONFIG", str(path))
    running = start_gateway(tmp_path, path)
    try:
        yield running
    finally:
        running.stop()

"""Fixtures of the gateway tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.gateways import start_gateway


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Any]:
    """Start real gateways from config files (start_gateway's options); each is stopped at the end."""
    started: list[Any] = []

    def start(config: Path, **options: Any) -> Any:
        running = start_gateway(tmp_path, config, **options)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()

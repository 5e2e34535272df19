"""The engine tier's shared engines (tests/support/shared_engines.py): started once, on the
first test that asks, and stopped at the end of the run."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.gateways import RunningGateway
from tests.support import shared_engines as shared
from tests.support.environment import require_vllm


@pytest.fixture(scope="session")
def shared_engines(three_tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    require_vllm()
    with shared.shared_gateway(three_tiny_models, tmp_path_factory.mktemp("shared-engines")) as gw:
        yield gw


@pytest.fixture
def shared_gateway(shared_engines: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningGateway]:
    """The shared gateway, found by the CLI from this test (its config, a state file); checked
    after the test to be as the test found it."""
    shared.use_shared_gateway(shared_engines, monkeypatch)
    yield shared_engines
    shared.assert_left_as_found(shared_engines)

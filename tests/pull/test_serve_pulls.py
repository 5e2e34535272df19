"""`serve` pulls what the models it loads lack before any engine starts; `--no-pull` skips it."""

from __future__ import annotations

from pathlib import Path

import pytest

from animllm_cli.config import load_config
from animllm_cli.pull import PullProgress, ensure_present
from tests.fakes.hub import FakeHub
from tests.support.helpers import free_port, run_cli


class Recorder(PullProgress):
    def __init__(self) -> None:
        self.finished: list[str] = []

    def file_finished(self, model, file) -> None:
        self.finished.append(f"{model}:{file.path}")


def test_ensure_present_pulls_the_missing_once(config: Path, hub: FakeHub) -> None:
    loaded = load_config(config)
    progress = Recorder()
    pulled = ensure_present(loaded, ["tiny", "localdir", "far"], progress=progress)
    assert [(m.model, m.status) for m in pulled] == [("tiny", "downloaded")]
    assert "tiny:model.safetensors" in progress.finished
    before = len(hub.seen)
    assert ensure_present(load_config(config), ["tiny"]) == []
    assert len(hub.seen) == before  # present: not even the hub is asked


def test_ensure_present_offline_warns_and_leaves_it_to_the_engine(config: Path, hub: FakeHub,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    warnings: list[str] = []
    assert ensure_present(load_config(config), ["tiny"], warn=warnings.append) == []
    assert "HF_HUB_OFFLINE" in warnings[0] and hub.seen == []


def test_ensure_present_failure_stops_the_start(config: Path, hub: FakeHub) -> None:
    from animllm_cli.errors import AnimllmError

    with pytest.raises(AnimllmError, match="org/not-there not found") as caught:
        ensure_present(load_config(config), ["missing"])
    assert "--no-pull" in (caught.value.hint or "")


@pytest.fixture
def foreground(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """serve up to the point where the gateway would start: what it was asked to load."""
    from animllm_cli.cli import serve

    started: list[str] = []
    monkeypatch.setattr(serve, "_foreground", lambda out, loaded, name, *rest, **options: started.append(name) or 0)
    return started


def test_serve_pulls_a_missing_model_before_starting(config: Path, hub: FakeHub, hf_cache: Path, foreground) -> None:
    result = run_cli("serve", "tiny", "--port", str(free_port()))
    assert result.exit_code == 0, result.stderr
    assert foreground == ["tiny"]
    assert "tiny: model.safetensors" in result.stderr
    assert any((hf_cache / "hub" / "models--org--tiny" / "snapshots").rglob("model.safetensors"))


def test_serve_no_pull_skips_it(config: Path, hub: FakeHub, foreground) -> None:
    result = run_cli("serve", "tiny", "--port", str(free_port()), "--no-pull")
    assert result.exit_code == 0, result.stderr
    assert foreground == ["tiny"] and hub.seen == []


def test_serve_of_a_missing_repo_stops_before_starting(config: Path, hub: FakeHub, foreground) -> None:
    result = run_cli("serve", "missing", "--port", str(free_port()))
    assert result.exit_code == 1 and foreground == []
    assert "org/not-there not found" in result.stderr and "--no-pull" in result.stderr


def test_switch_pulls_a_missing_model_before_the_gateway_loads_it(tmp_path: Path, hub: FakeHub, tiny_models,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.gateways import fake_gateway_config, start_gateway

    hub.add("org/model-b", "main", tiny_models["tiny-b"])  # b's source in the fake gateway's config
    config = fake_gateway_config(tmp_path, env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url,
                                                "HF_HOME": str(tmp_path / "hf")})
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    running = start_gateway(tmp_path, config)
    try:
        switched = run_cli("switch", "code")  # b's task: resolved as the gateway resolves it
        assert switched.exit_code == 0, switched.stderr
        assert "b: model.safetensors" in switched.stderr and running.gateway.pool.model == "b"
        assert any((tmp_path / "hf" / "hub" / "models--org--model-b" / "snapshots").rglob("model.safetensors"))
        before = len(hub.seen)
        assert run_cli("switch", "a", "--no-pull").exit_code == 0  # org/model-a is on no hub: not asked
        assert len(hub.seen) == before and running.gateway.pool.model == "a"
    finally:
        running.stop()

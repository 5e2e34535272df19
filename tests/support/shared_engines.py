"""The shared engines: one gateway, started once per run, serving tiny-a and tiny-b side by
side on real vLLM, for the engine tier's tests that need healthy engines and neither kill,
time nor count their starts. Each engine start costs 30-50 s on this machine; a test that
started its own would pay that again. Its config also names tiny-c, which does not fit
beside the two (each holds SHARE of the card): loading it evicts one.

A test that uses them leaves them as it found them (both resident and ready); one that
loads or unloads a model puts it back, and pays for that start in the budget of starts
(tests/support/engine_starts.py). When the run ends, the gateway's stop must leave none of
their processes, without SIGKILL."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from animllm_cli.engine import processes
from animllm_cli.runfile import GatewayState, write_state
from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.support.gateways import RunningGateway, start_bound_s, start_gateway
from tests.support.helpers import free_port, run_cli, tiny_config, write
from tests.support import engine_starts
from tests.support.environment import isolate
from tests.support.waiting import wait_until

MODELS = ("tiny-a", "tiny-b")   # resident from the start to the end of the run
OTHER = "tiny-c"                # configured, not loaded
POOLING = "tiny-p"              # configured, not loaded: tiny-a's files run as a pooling model (embeddings, score)
SHARE = 0.45  # of a fake 16 GiB card: the two fit together, and a third would not
CARD = "shared-engines"  # the fake card they hold their share of, and no other gateway's card


def shared_config(path: Path, tiny_models: dict[str, Path]) -> Path:
    """The tiny config, each model at SHARE of its own fake card, so that two stay resident;
    the engines keep stored responses (the Responses API's `store`, vLLM's env switch)."""
    config = tiny_config(path, {name: tiny_models[name] for name in (*MODELS, OTHER)}, port=free_port())
    text = config.read_text().replace("env:\n", f"env:\n  FAKE_NVML_CARD: {CARD}\n"
                                                 f"  VLLM_ENABLE_RESPONSES_API_STORE: \"1\"\n", 1)
    for name in (*MODELS, OTHER):
        text = text.replace(f"{{source: {tiny_models[name]}, ", f"{{source: {tiny_models[name]}, share: {SHARE}, ")
    text += (f"  {POOLING}: {{source: {tiny_models['tiny-a']}, share: {SHARE}, profile: tiny, "
             f"extra_args: {{runner: pooling}}}}\n")
    return write(config, text)


@contextlib.contextmanager
def shared_gateway(tiny_models: dict[str, Path], home: Path) -> Iterator[RunningGateway]:
    """Start the shared gateway: tiny-a, then tiny-b preloaded beside it, in the environment
    a test gets (its own dirs under `home`, no developer overrides); the engines it launches
    meanwhile carry the shared mark."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate(monkeypatch, home)
        monkeypatch.setenv(engine_starts.SHARED_MARK, "1")
        config = shared_config(home / "animllm.yaml", tiny_models)
        gw = start_gateway(home, config, model=MODELS[0], nvml=FakeNvml([FakeGpu(engine_bytes="share", card=CARD)]),
                           preload=list(MODELS[1:]), state_file=False)
        try:
            notes = wait_until(lambda: [text for kind, text in gw.events if kind == "note"],
                               start_bound_s(gw.gateway.loaded), "the shared gateway's preload of tiny-b")
            assert resident(gw) == set(MODELS), f"the shared engines did not start: {gw.events}"
            assert notes[0].startswith("preload: tiny-b ready"), notes
        except BaseException:
            gw.stop()
            raise
    try:
        yield gw
    finally:
        known = {pid: psutil.Process(pid) for pid in gw.gateway.pool.all_pids() if psutil.pid_exists(pid)}
        gw.stop()
    assert_stopped_clean(gw, known)


def assert_stopped_clean(gw: RunningGateway, known: dict[int, psutil.Process]) -> None:
    """The gateway's stop ended every engine it held within the grace period (no SIGKILL),
    and none of their processes (API servers, EngineCores, workers) is left."""
    stopped = [report for kind, report in gw.events if kind == "stopped"]
    assert stopped and stopped[0] is not None, f"the shared gateway reported no stop: {gw.events}"
    assert not stopped[0].forced and stopped[0].left == [], stopped[0]
    assert processes.living(known) == set(), f"left running after the shared gateway's stop: {processes.living(known)}"


def resident(gw: RunningGateway) -> set[str]:
    """The models with a ready engine."""
    return {model for model in gw.gateway.pool.models if gw.gateway.pool.engine_for(model)}


def use_shared_gateway(gw: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the CLI at the shared gateway from this test: its config, and a state file in
    this test's state dir that names it (and no engines, so that nothing here stops them)."""
    config = gw.gateway.loaded.files[-1]
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    port = int(gw.url.rsplit(":", 1)[1])
    write_state(GatewayState(os.getpid(), gw.url, "127.0.0.1", port, time.time(), None, [str(config)]))


def assert_left_as_found(gw: RunningGateway) -> None:
    """Fail a test that did not leave both shared engines ready, after putting back what it
    left missing (the next tests would otherwise fail with it, or start engines of their own)."""
    found = resident(gw)
    missing = [model for model in MODELS if model not in found]
    for model in found - set(MODELS) if missing else ():
        unloaded = run_cli("unload", model)
        assert unloaded.exit_code == 0, f"unloading {model}: {unloaded.stdout} {unloaded.stderr}"
    for model in missing:
        switched = run_cli("switch", model, "--json")
        assert switched.exit_code == 0, f"putting back {model}: {switched.stdout} {switched.stderr}"
    assert not missing, (f"this test left the shared engines as {sorted(found)}: put back what it unloaded "
                         f"(the fixture put back {', '.join(missing)})")

"""A short soak (benchmarks/soak.py) over real vLLM: a load of streamed and plain requests
on tiny-a while its engine's API server and then the gateway itself are killed with
SIGKILL. Every request ends answered or with a clean error; the killed gateway's engine
ends with its owner (its launcher's watchdog: vLLM issue #55510 is what happens without
it); nothing is lost or left running. One model, so that the three engine starts are the
first, the restart after the engine's death and the one after the gateway's; switching
under load is test_gateway_real.py's."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import run_soak

pytestmark = pytest.mark.engine


def test_short_soak_loses_nothing_and_leaves_nothing(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result = run_soak(duration_s=60, clients=3, engine_kills=1, seed=7, root=tmp_path, models=("tiny-a",))
    print("\n" + "\n".join(result["events"]))
    print({k: result[k] for k in ("sent", "answered", "failed clean", "refused after a crash", "gateway down", "lost",
                                  "in_flight_after")})
    assert result["lost"] == 0 and result["refused after a crash"] == 0, result["lost_examples"]
    assert result["engine_processes_left"] == []
    assert result["left_after_gateway_kill"] == []
    assert result["in_flight_after"] == 0 and result["queue_after"] == 0
    assert result["stop_exit"] == 0
    assert result["answered"] >= 1 and result["sent"] == (result["answered"] + result["failed clean"]
                                                          + result["refused after a crash"]
                                                          + result["gateway down"] + result["lost"])
    assert any("SIGKILL the gateway" in event for event in result["events"])

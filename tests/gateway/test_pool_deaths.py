"""An engine's death as the pool takes it (gateway/pool.py): found by its watcher or by the
check a failed request asks for, it is taken once, and the resident is dead by the time the
check answers. No engine: the pool reads only an engine's model, state and death."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from animllm_cli.config import load_config
from animllm_cli.engine.supervisor import State as EngineLifecycle
from animllm_cli.gateway.pool import EnginePool
from animllm_cli.gateway.resident import Resident, ResidentState
from animllm_cli.gpu.planner import Share
from animllm_cli.wire import EngineDeath
from tests.support.gateways import fake_gateway_config


@dataclass(eq=False)
class Watched:
    """An engine as the pool sees it once ready."""
    model: str = "a"
    state: EngineLifecycle = EngineLifecycle.READY
    death: EngineDeath | None = None


def test_a_death_its_watcher_found_is_taken_before_the_check_answers_and_only_once(tmp_path: Path) -> None:
    """The watcher hands the death to the loop; a request that fails on the engine in the
    turns between finds the death known already. The check takes it then: the resident is
    dead when the request goes to wait for the restart (never routed to the dead engine
    again), and the watcher's hand-over, coming after, counts nothing twice."""
    async def scenario() -> None:
        told: list[str] = []
        pool = EnginePool(load_config(fake_gateway_config(tmp_path)), on_death=lambda model, death: told.append(model))
        engine = Watched()
        resident = Resident("a", engine, (0,), Share("a", 0.5, 0, "share"), {})  # type: ignore[arg-type]
        resident.ready()
        pool.residents["a"] = resident
        engine.state, engine.death = EngineLifecycle.DEAD, EngineDeath(kind="signal", cause="killed by SIGKILL")
        assert await pool.check(engine) is engine.death  # type: ignore[arg-type]
        assert resident.state is ResidentState.DEAD and pool.models == [] and pool.restarting == ["a"]
        pool._on_death(engine)  # type: ignore[arg-type]  # the watcher's hand-over, on the loop
        assert told == ["a"] and pool.restarting == ["a"]
        pool.restarts.max_restarts = 1
        pool.restarts.check("a")                          # one death counted against the budget, not two

    asyncio.run(scenario())

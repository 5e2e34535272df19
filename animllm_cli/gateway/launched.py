"""Every engine the pool launched and has not yet seen stopped, including one being
replaced or shut down: what a sudden death of the gateway would leave behind. The state
file names their process groups (gateway/server.py), for the next `serve` or `stop`."""

from __future__ import annotations

from typing import Callable

from animllm_cli.engine.supervisor import Engine
from animllm_cli.runfile import EngineGroup


class Launched:
    def __init__(self, changed: Callable[[], None]) -> None:
        """`changed`: called whenever an engine is added or dropped (from the loop or a starting thread)."""
        self._engines: list[Engine] = []
        self._changed = changed

    def track(self, engine: Engine) -> None:
        """Called from the starting thread as soon as the engine's process exists."""
        self._engines.append(engine)
        self._changed()

    def forget(self, engine: Engine) -> None:
        if engine in self._engines:
            self._engines.remove(engine)
            self._changed()

    def groups(self) -> list[EngineGroup]:
        return [EngineGroup(e.model, e.pid, e.created_at, e.module, e.watchdog_pid)
                for e in list(self._engines) if e.pid is not None]

"""The restart budget: an engine that keeps dying is not started again and again."""

from __future__ import annotations

import time
from typing import Callable


class EngineGaveUp(Exception):
    pass


class RestartBudget:
    """At most `max_restarts` deaths of one model's engine within `window_s`."""

    def __init__(self, max_restarts: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_restarts, self.window_s, self._clock = max_restarts, window_s, clock
        self._deaths: dict[str, list[float]] = {}

    def died(self, model: str) -> None:
        self._deaths.setdefault(model, []).append(self._clock())

    def check(self, model: str) -> None:
        """Raise EngineGaveUp if `model`'s engine died more often than the budget allows."""
        recent = [t for t in self._deaths.get(model, []) if self._clock() - t < self.window_s]
        self._deaths[model] = recent
        if len(recent) > self.max_restarts:
            raise EngineGaveUp(f"the engine for '{model}' died {len(recent)} times in "
                               f"{self.window_s:.0f}s; not restarting it (see `animllm logs`)")

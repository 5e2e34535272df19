"""Which configured model a request's `model` field means: a name, an alias, the
model's source, or a task (the loaded model first, so a task never forces a needless switch)."""

from __future__ import annotations

from animllm_cli.config import LoadedConfig
from animllm_cli.errors import UsageError


class Router:
    def __init__(self, loaded: LoadedConfig) -> None:
        self._loaded = loaded
        self._exact: dict[str, str] = {}
        for name, spec in loaded.config.models.items():
            for key in (name, *spec.aliases, spec.source):
                self._exact.setdefault(key, name)
                self._exact.setdefault(key.lower(), name)
        self._tasks: dict[str, list[str]] = {}
        for name, spec in loaded.config.models.items():
            for task in spec.tasks:
                self._tasks.setdefault(task.lower(), []).append(name)

    def resolve(self, requested: str, loaded_model: str | None = None) -> str | None:
        found = self._exact.get(requested) or self._exact.get(requested.lower())
        if found:
            return found
        candidates = self._tasks.get(requested.lower(), [])
        if loaded_model in candidates:
            return loaded_model
        return candidates[0] if candidates else None

    def available(self) -> list[str]:
        return [*self._loaded.config.models, *sorted(self._tasks)]

    def served_names(self, model: str) -> set[str]:
        """Names the engine itself answers to: a request using one needs no rewrite."""
        spec = self._loaded.config.models[model]
        return {model, *spec.aliases}

    def require(self, requested: str, loaded_model: str | None = None) -> str:
        found = self.resolve(requested, loaded_model)
        if found is None:
            raise UsageError(f"unknown model '{requested}'", hint=f"available: {', '.join(self.available())}")
        return found

"""The model catalogue: every word that names a configured model (its name, an alias, its
source, or a task it serves), resolved by one rule in every command, in shell completion
and in the gateway. Built once per config load; matching ignores case.

The rule: a name, alias or source names that model (names and aliases are unique, which
the loader checks; a source shared by two models means the first). Otherwise a task
names the models that list it: a loaded one first, so a task never forces a needless
switch, else the first in the config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Iterable, Mapping

from animllm_cli.errors import UsageError


@dataclass(frozen=True)
class Entry:
    name: str
    aliases: tuple[str, ...]
    source: str
    tasks: tuple[str, ...]


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(item for item in value if isinstance(item, str)) if isinstance(value, (list, tuple)) else ()


def _entry(name: str, spec: Any) -> Entry:
    """From a validated ModelSpec or, before validation, the raw mapping (wrong types skipped)."""
    get = spec.get if isinstance(spec, Mapping) else lambda key: getattr(spec, key, None)
    source = get("source")
    return Entry(name, _strings(get("aliases")), source if isinstance(source, str) else "", _strings(get("tasks")))


class Catalogue:
    def __init__(self, entries: Iterable[Entry], default: str | None = None) -> None:
        self.entries = {entry.name: entry for entry in entries}
        self.default = default
        self._exact: dict[str, str] = {}
        self._tasks: dict[str, list[str]] = {}
        # Names first, then aliases, then sources: an earlier claim keeps a word.
        for words in (lambda e: (e.name,), lambda e: e.aliases, lambda e: (e.source,) if e.source else ()):
            for entry in self.entries.values():
                for word in words(entry):
                    self._exact.setdefault(word.casefold(), entry.name)
        for entry in self.entries.values():
            for task in entry.tasks:
                self._tasks.setdefault(task.casefold(), []).append(entry.name)

    @classmethod
    def from_models(cls, models: Mapping[str, Any] | None, default: str | None = None) -> "Catalogue":
        models = models if isinstance(models, Mapping) else {}
        return cls((_entry(name, spec) for name, spec in models.items() if isinstance(name, str) and spec is not None),
                   default)

    # ------------------------------------------------------------------ lookups
    def find(self, wanted: str, *, loaded: Collection[str | None] = ()) -> str | None:
        """The model `wanted` names, or None. `loaded`: models that are loaded now."""
        key = wanted.casefold()
        exact = self._exact.get(key)
        if exact:
            return exact
        candidates = self._tasks.get(key, [])
        return next((name for name in candidates if name in loaded), candidates[0] if candidates else None)

    def resolve(self, wanted: str | None, *, loaded: Collection[str | None] = ()) -> str:
        """Like `find`, but None means the default model and an unknown word is a usage error."""
        if wanted is None:
            return self._default()
        found = self.find(wanted, loaded=loaded)
        if found is None:
            raise UsageError(f"unknown model '{wanted}'", hint=f"configured models: {self.describe()}")
        return found

    def _default(self) -> str:
        if self.default:
            return self.resolve(self.default)
        if len(self.entries) == 1:
            return next(iter(self.entries))
        raise UsageError("no model given and the config sets no default_model",
                         hint=f"name one of: {', '.join(self.entries) or '(none configured)'}")

    # ------------------------------------------------------------------ descriptions
    def served_names(self, name: str) -> list[str]:
        """The names the engine itself answers to (`--served-model-name`)."""
        entry = self.entries[name]
        return [name, *(alias for alias in entry.aliases if alias != name)]

    def tasks(self, name: str) -> tuple[str, ...]:
        return self.entries[name].tasks

    def available(self) -> list[str]:
        """Every model name and task, for 'not found' messages."""
        return [*self.entries, *sorted({task for entry in self.entries.values() for task in entry.tasks})]

    def words(self) -> list[tuple[str, str]]:
        """(word, what it means) for shell completion: names, aliases and tasks."""
        words = [(e.name, ", ".join(e.tasks) or e.source) for e in self.entries.values()]
        words += [(alias, f"alias of {e.name}") for e in self.entries.values() for alias in e.aliases]
        tasks: dict[str, list[str]] = {}
        for entry in self.entries.values():
            for task in entry.tasks:
                tasks.setdefault(task, []).append(entry.name)
        words += [(task, f"task: {', '.join(names)}") for task, names in tasks.items() if task not in self.entries]
        return words

    def describe(self) -> str:
        parts = [f"{e.name} ({', '.join(e.aliases)})" if e.aliases else e.name for e in self.entries.values()]
        tasks = sorted({task for entry in self.entries.values() for task in entry.tasks})
        return "; ".join(parts or ["(none)"]) + (f"; tasks: {', '.join(tasks)}" if tasks else "")

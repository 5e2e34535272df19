"""Layered config data that remembers where every value came from.

Layers are plain nested dicts merged in order of precedence (lowest first): mappings
merge key by key, everything else (numbers, strings, lists) replaces. Each key path that
a layer sets records its `Source`; a value's source is that of the nearest recorded path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Literal

KeyPath = tuple[str, ...]
SourceKind = Literal["builtin", "default", "file", "dotenv", "env", "flag"]


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    origin: str = ""        # file path, environment variable or flag as the user typed it
    line: int | None = None
    fanout: bool = False    # one override applied to every model (GPU_MEMORY_UTILIZATION, say)

    def __str__(self) -> str:
        where = f"{self.origin}:{self.line}" if self.line else self.origin
        return {
            "builtin": f"built-in: {self.origin}" if self.origin else "built-in default",
            "default": f"shipped default {Path(self.origin).name}:{self.line}" if self.line else "shipped default",
            "file": where,
            "dotenv": where,
            "env": f"env {where}",
            "flag": f"flag {where}",
        }[self.kind]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "origin": self.origin or None, "line": self.line, "text": str(self)}


BUILTIN = Source("builtin")


@dataclass
class Layer:
    data: dict[str, Any]
    sources: dict[KeyPath, Source]


class LayeredTree:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self._sources: dict[KeyPath, Source] = {}

    def merge(self, layer: Layer) -> None:
        self._merge_into(self.data, layer.data, (), layer)

    def _merge_into(self, target: dict[str, Any], incoming: dict[str, Any], path: KeyPath, layer: Layer) -> None:
        for key, value in incoming.items():
            child = (*path, key)
            source = layer.sources.get(child) or self._nearest(layer.sources, child)
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                self._sources.setdefault(child, source)
                self._merge_into(target[key], value, child, layer)
                continue
            self._forget_below(child)
            target[key] = copy.deepcopy(value)
            self._sources[child] = source
            if isinstance(value, dict):
                for sub, sub_source in layer.sources.items():
                    if sub[: len(child)] == child and len(sub) > len(child):
                        self._sources[sub] = sub_source

    def _forget_below(self, path: KeyPath) -> None:
        for known in [p for p in self._sources if p[: len(path)] == path]:
            del self._sources[known]

    @staticmethod
    def _nearest(sources: dict[KeyPath, Source], path: KeyPath) -> Source:
        for cut in range(len(path), -1, -1):
            if path[:cut] in sources:
                return sources[path[:cut]]
        return BUILTIN

    def source_of(self, path: KeyPath, *, for_error: bool = False) -> Source:
        """Where the value at `path` came from.

        A value that no layer set is the schema's built-in default. For an error about a
        missing key, the nearest enclosing key that a layer did set is the better pointer.
        """
        if path in self._sources:
            return self._sources[path]
        if not for_error and self.lookup(path) is _MISSING:
            return BUILTIN
        return self._nearest(self._sources, path)

    def lookup(self, path: KeyPath) -> Any:
        node: Any = self.data
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return _MISSING
            node = node[key]
        return node


_MISSING = object()


def set_path(data: dict[str, Any], path: KeyPath, value: Any) -> None:
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value

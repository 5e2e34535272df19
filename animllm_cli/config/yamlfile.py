"""Read a YAML file into plain data plus the line of every key, for error messages.

PyYAML's SafeLoader gives nodes with marks; we walk the node tree ourselves so that each
value keeps the line it was written on. Duplicate keys, which PyYAML silently resolves to
the last one, are reported instead.

Anchors and aliases are bounded while the file is composed, before anything is expanded:
an alias that refers to the node it sits in (a recursive structure) is refused, and so is
a file whose aliases together stand for more than `MAX_ALIAS_NODES` nodes (nested anchors,
a "billion laughs", would otherwise expand a few lines into hundreds of thousands of keys).
A shared profile or env block used by a few dozen models is far below the bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from animllm_cli.errors import ConfigError

KeyPath = tuple[str, ...]

# How many nodes (mappings, lists, keys and values) all the aliases of one file may stand
# for together. A config that reuses a 20-key profile for 100 models uses about 4,000.
MAX_ALIAS_NODES = 10_000


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses recursive aliases and bounds what aliases expand to."""

    def __init__(self, text: str, file: Path) -> None:
        super().__init__(text)
        self._file = file
        self._open_anchors: set[str] = set()    # anchors whose node is still being composed
        self._sizes: dict[int, int] = {}        # id(node) -> nodes in its full expansion
        self._alias_nodes = 0                   # the file's aliases, expanded, in nodes

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            where = f"{self._file}:{event.start_mark.line + 1}"
            if event.anchor in self._open_anchors:
                raise ConfigError([f"{where}: alias *{event.anchor} refers to the value it is part of "
                                   f"(a recursive structure); animllm config cannot be recursive"])
            node = super().compose_node(parent, index)
            self._alias_nodes += self._size(node)
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise ConfigError([f"{where}: alias *{event.anchor}: the file's aliases expand to more than "
                                   f"{MAX_ALIAS_NODES:,} values (nested anchors?); write the values out "
                                   f"or use fewer aliases"])
            return node
        anchor = self.peek_event().anchor
        if anchor is None:
            return super().compose_node(parent, index)
        self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.discard(anchor)

    def _size(self, node: yaml.Node) -> int:
        """Nodes in `node`'s expansion, counting each alias in full; memoised, so linear in the file."""
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._size(item) for item in node.value)
        else:
            size = 1
        self._sizes[id(node)] = size
        return size


def load_yaml(path: Path) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """Return (data, lines): the top-level mapping and the 1-based line of every key path."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"],
                          hint="check the path given by --config or ANIMLLM_CONFIG") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc}"]) from None
    loader = _BoundedLoader(text, path)
    try:
        root = loader.get_single_node()
        if root is None:
            return {}, {}
        if not isinstance(root, yaml.MappingNode):
            line = root.start_mark.line + 1
            raise ConfigError([f"{path}:{line}: the top level must be a mapping of sections (gpu:, models:, ...), "
                               f"found {_kind(root)}"])
        lines: dict[KeyPath, int] = {}
        data = _walk(loader, root, (), lines, path)
        return data, lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError([f"{where}: malformed YAML: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: malformed YAML: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: values nested too deeply"]) from None
    finally:
        loader.dispose()


def _kind(node: yaml.Node) -> str:
    return {yaml.ScalarNode: "a single value", yaml.SequenceNode: "a list"}.get(type(node), "something else")


def _walk(loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], file: Path) -> Any:
    if isinstance(node, yaml.MappingNode):
        own = {id(k) for k, _ in node.value}
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys as SafeLoader would
        result: dict[str, Any] = {}
        merged: set[str] = set()      # keys that came from `<<:`; the mapping's own keys override them
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                key = str(key)
            child = (*path, key)
            if key in result and key in merged:
                merged.discard(key)
                for stale in [p for p in lines if p[:len(child)] == child]:
                    del lines[stale]
            elif key in result:
                raise ConfigError([f"{file}:{line}: {'.'.join(child)}: duplicate key "
                                   f"(first set on line {lines[child]})"])
            if id(key_node) not in own:
                merged.add(key)
            lines[child] = line
            result[key] = _walk(loader, value_node, child, lines, file)
        return result
    # Lists and scalars are leaves: they replace, never merge, across layers.
    return loader.construct_object(node, deep=True)

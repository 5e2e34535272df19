"""Read a YAML file into plain data plus the line of every key, for error messages.

PyYAML's SafeLoader gives nodes with marks; we walk the node tree ourselves so that each
value keeps the line it was written on. Duplicate keys, which PyYAML silently resolves to
the last one, are reported instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from animllm_cli.errors import ConfigError

KeyPath = tuple[str, ...]


def load_yaml(path: Path) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """Return (data, lines): the top-level mapping and the 1-based line of every key path."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"],
                          hint="check the path given by --config or ANIMLLM_CONFIG") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc}"]) from None
    loader = yaml.SafeLoader(text)
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
    finally:
        loader.dispose()


def _kind(node: yaml.Node) -> str:
    return {yaml.ScalarNode: "a single value", yaml.SequenceNode: "a list"}.get(type(node), "something else")


def _walk(loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], file: Path) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys as SafeLoader would
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                key = str(key)
            child = (*path, key)
            if key in result:
                raise ConfigError([f"{file}:{line}: {'.'.join(child)}: duplicate key "
                                   f"(first set on line {lines[child]})"])
            lines[child] = line
            result[key] = _walk(loader, value_node, child, lines, file)
        return result
    # Lists and scalars are leaves: they replace, never merge, across layers.
    return loader.construct_object(node, deep=True)

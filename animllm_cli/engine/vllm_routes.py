"""Which HTTP routes each vLLM release from 0.9.0 on serves: the table in vllm_routes.json,
read from every release's own source by scripts/read_vllm_routes.py (never edited by hand).

The gateway relays a request to an engine only on a route that engine's release serves,
with the body that route takes (JSON, or a multipart form for audio), and can tell a
route the release lacks (naming the first release that has it) from one the model's task
leaves out: from 0.16 on, vLLM registers the generation routes only for a model that
generates, the pooling ones only for a pooling model, and so on. A version outside the
table (older than the first release read, newer than the last) has no answer: guessing a
newer vLLM's routes from an older one's would be worse than asking that vLLM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TABLE_PATH = Path(__file__).with_name("vllm_routes.json")


@dataclass(frozen=True)
class RouteSpec:
    """One route as one release registers it."""
    path: str                          # FastAPI's form: /v1/responses/{response_id}
    methods: tuple[str, ...]           # GET, POST, ...; WEBSOCKET for a websocket
    body: str                          # json | multipart | raw | none (of the POST handler)
    request: str | None                # its request class; None where it parses the body itself
    tasks: tuple[str, ...] | None      # the model tasks it is registered for; None: any model
    when: str | None = None            # any other condition on it (a flag, a variable), as vLLM's source text


@cache
def _table() -> dict:
    return json.loads(TABLE_PATH.read_text())


def table_releases() -> list[str]:
    return list(_table()["releases"])


def _release_index(version: str) -> int | None:
    """The release a version's routes are read from: itself, or a local build of it (`+cpu`);
    None for any other version. A nightly or release candidate between two releases may
    already serve the next release's routes (a 0.11.1 dev build has /v1/messages): reading
    it as the release before would refuse them, so it is left to vLLM, as a version outside
    the table is."""
    from packaging.version import InvalidVersion, Version

    releases = table_releases()
    try:
        wanted = Version(version)
    except InvalidVersion:
        return None
    return releases.index(wanted.public) if wanted.public in releases else None


@cache
def _routes_at(index: int) -> dict[str, RouteSpec]:
    return {route["path"]: _spec(route) for route in _table()["routes"]
            if any(first <= index <= last for first, last in route["releases"])}


def _spec(route: dict) -> RouteSpec:
    tasks = route["tasks"]
    return RouteSpec(route["path"], tuple(route["methods"]), route["body"], route["request"],
                     tuple(tasks) if tasks is not None else None, route.get("when"))


def routes_of(version: str) -> dict[str, RouteSpec] | None:
    """The routes a vLLM version serves, by path; None when the table does not cover it."""
    index = _release_index(version)
    return None if index is None else dict(_routes_at(index))


def first_release_with(path: str) -> str | None:
    """The first release read that serves `path` (for any model), or None if none does."""
    found = [first for route in _table()["routes"] if route["path"] == path for first, _ in route["releases"]]
    return table_releases()[min(found)] if found else None

"""The event loop and HTTP parser the gateway runs on, in one place: what uvicorn is told
(gateway/server.py), what a running gateway says it runs (`status`) and what one would run
here (`doctor`).

uvloop and httptools are declared dependencies (pyproject.toml): the relay's cost per
chunk is mostly the loop's and the HTTP layer's, and their pure-Python fallbacks, asyncio
and h11, cost more of it. They are still only used where they can be imported (uvloop
has no Windows build): a gateway without them runs, slower, and says so. Read from
package metadata and import specs, without importing either (`doctor --json` stays light).
"""

from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass
from importlib import metadata

FAST_LOOP, FAST_HTTP = "uvloop", "httptools"
SLOW_LOOP, SLOW_HTTP = "asyncio", "h11"
FIX = "pip install uvloop httptools (animllm declares them; reinstalling animllm brings them)"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def importable(module: str) -> bool:
    """Whether `module` is installed for this interpreter (found, with its metadata), unimported."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
    return found and _version(module) is not None


def loop_text(loop: str) -> str:
    """`uvloop 0.21.0`; asyncio is the interpreter's own: `asyncio (Python 3.11.9)`."""
    if loop == SLOW_LOOP:
        return f"asyncio (Python {platform.python_version()})"
    return f"{loop} {_version(loop) or '?'}"


def http_text(http: str) -> str:
    """`httptools 0.6.4`, `h11 0.16.0`."""
    return f"{http} {_version(http) or '?'}"


@dataclass(frozen=True)
class ServerStack:
    loop: str   # uvloop | asyncio
    http: str   # httptools | h11

    @property
    def fast(self) -> bool:
        return self.loop == FAST_LOOP and self.http == FAST_HTTP

    def missing(self) -> list[str]:
        """The fast ones it runs without."""
        return [fast for fast, used in ((FAST_LOOP, self.loop), (FAST_HTTP, self.http)) if used != fast]


def chosen() -> ServerStack:
    """What a gateway started from this interpreter runs: uvloop and httptools where installed."""
    return ServerStack(FAST_LOOP if importable(FAST_LOOP) else SLOW_LOOP,
                       FAST_HTTP if importable(FAST_HTTP) else SLOW_HTTP)


def loop_name(loop: object) -> str:
    """The kind of a running event loop: uvloop, else asyncio (its own loops, or another's
    built on it)."""
    return FAST_LOOP if type(loop).__module__.split(".")[0] == FAST_LOOP else SLOW_LOOP

"""The start-up phases of an engine, read from its log.

vLLM prints a recognisable line as each stage begins (or as the one before it ends); a
phase runs from its marker to the next phase's. Two readings of one table:

- the live phase (`advance`), for progress and diagnosis: the latest stage seen, never an
  earlier one;
- the breakdown (`breakdown`), for `bench --startup`: the time each phase took, from the
  moments its markers were first seen, in the order they came (a GPU compiles during the
  memory profile, the CPU build never does: the table's order is only the usual one).

Ready itself is never read from the log: only `/health` returning 200 means ready.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Patterns are specific on purpose: vLLM's config dump and its warnings mention
# "cudagraph", "torch.compile" and "download_dir" long before those stages happen.
# The three start-ups are Python's: each of the API server, EngineCore and the worker is a
# fresh interpreter importing vLLM and torch (spawned, not forked: see docs/engines.md).
PHASES: list[tuple[str, re.Pattern[str]]] = [
    ("starting", re.compile(r"$^")),  # the API server's interpreter: Python, vLLM and torch imported
    ("resolving model", re.compile(r"non-default args|vLLM API server version")),
    ("starting engine core", re.compile(r"Resolved architecture|Using max model len")),
    ("starting workers", re.compile(r"Initializing a V1 LLM engine|Initializing an LLM engine")),
    ("loading weights", re.compile(r"Starting to load model|Loading weights|Loading safetensors|Loading model weights|"
                                   r"Downloading (model|shards|files)|Fetching \d+ files")),
    ("profiling memory", re.compile(r"Loading weights took|Model loading took|Memory profiling|profil(e|ing) run")),
    ("allocating KV cache", re.compile(r"Available KV cache memory|Explicitly set .* for KV cache")),
    ("warming up", re.compile(r"KV cache size: |Maximum concurrency for")),
    ("compiling", re.compile(r"Dynamo bytecode transform|Compiling a graph|torch\.compile takes")),
    ("capturing graphs", re.compile(r"Capturing CUDA graph|Capturing cudagraphs")),
    ("starting server", re.compile(r"init engine .* took|Starting vLLM (API )?server")),
    ("checking health", re.compile(r"Application startup complete")),
]
ORDER = [name for name, _ in PHASES]
READY = "ready"              # /health answered 200 (the supervisor's clock, not the log)
FIRST_ANSWER = "first answer"  # from ready to the first request answered (bench --startup)


def advance(current: str, line: str) -> str:
    """The phase after seeing `line`: the latest stage it names, never an earlier one."""
    index = ORDER.index(current)
    for position in range(len(PHASES) - 1, index, -1):
        if PHASES[position][1].search(line):
            return ORDER[position]
    return current


class Marks:
    """When each phase's marker was first seen, in seconds from the launch."""

    def __init__(self) -> None:
        self.first_seen: dict[str, float] = {ORDER[0]: 0.0}

    def see(self, line: str, at_s: float) -> None:
        for name, pattern in PHASES[1:]:
            if name not in self.first_seen and pattern.search(line):
                self.first_seen[name] = at_s

    def timeline(self) -> list[tuple[str, float]]:
        """Each phase seen and the second it began, in the order they began."""
        return sorted(self.first_seen.items(), key=lambda item: item[1])


@dataclass(frozen=True)
class Phase:
    name: str
    began_s: float
    took_s: float


def breakdown(timeline: list[tuple[str, float]], ended_s: float) -> list[Phase]:
    """The phases of a timeline (phase, second it began), each until the next began and
    the last until `ended_s`."""
    ends = [began for _, began in timeline[1:]] + [ended_s]
    return [Phase(name, began, round(max(0.0, end - began), 3)) for (name, began), end in zip(timeline, ends)]

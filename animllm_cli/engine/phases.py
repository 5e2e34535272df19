"""The start-up phase an engine is in, read from its log.

vLLM prints a recognisable line as it enters each stage; the phase only moves forward.
Ready itself is never read from the log: only `/health` returning 200 means ready.
"""

from __future__ import annotations

import re

# Patterns are specific on purpose: vLLM's config dump and its warnings mention
# "cudagraph", "torch.compile" and "download_dir" long before those stages happen.
PHASES: list[tuple[str, re.Pattern[str]]] = [
    ("starting", re.compile(r"$^")),  # the initial phase: imports, before vLLM prints anything useful
    ("resolving model", re.compile(r"non-default args|Resolved architecture|Using max model len")),
    ("loading weights", re.compile(r"Starting to load model|Loading weights|Loading safetensors|Loading model weights|"
                                   r"Downloading (model|shards|files)|Fetching \d+ files")),
    ("profiling memory", re.compile(r"Memory profiling|profil(e|ing) run|Available KV cache memory|"
                                    r"Explicitly set .* for KV cache")),
    ("allocating KV cache", re.compile(r"KV cache size: |Maximum concurrency for")),
    ("compiling", re.compile(r"Dynamo bytecode transform|Compiling a graph|torch\.compile takes")),
    ("capturing graphs", re.compile(r"Capturing CUDA graph|Capturing cudagraphs|Graph capturing finished")),
    ("starting server", re.compile(r"init engine .* took|Starting vLLM (API )?server|Application startup complete")),
]
ORDER = [name for name, _ in PHASES]


def advance(current: str, line: str) -> str:
    """The phase after seeing `line`: the latest stage it names, never an earlier one."""
    index = ORDER.index(current)
    for position in range(len(PHASES) - 1, index, -1):
        if PHASES[position][1].search(line):
            return ORDER[position]
    return current

"""Which engine holds each stored response of the Responses API.

vLLM keeps a stored response (`store: true`, with VLLM_ENABLE_RESPONSES_API_STORE=1 in the
engine's environment) in the memory of the engine that made it: `GET /v1/responses/{id}`,
its cancel and a later request's `previous_response_id` work only there. The gateway reads
each answer's id (the body's, or the first event's of a stream) and remembers the model
and the engine (or, for a model served elsewhere, the upstream URL), the newest LIMIT of
them, of the requests that asked to store; an engine stopped since (unloaded, evicted,
restarted) has taken its responses with it, which the client is told in so many words
rather than with a bare 404 from another engine. One asleep keeps them.
"""

from __future__ import annotations

import json
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from animllm_cli.gateway.relay import Target

LIMIT = 10_000


@dataclass
class Holder:
    model: str
    engine: weakref.ref | None  # the local Engine that stored it (a stopped one may be collected: gone either way)
    url: str | None = None      # or the upstream URL it was stored at (a model served elsewhere)


class StoredResponses:
    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._holders: OrderedDict[str, Holder] = OrderedDict()

    def remember(self, response_id: str, model: str, target: Target) -> None:
        self._holders[response_id] = Holder(model, weakref.ref(target.engine) if target.engine else None,
                                            None if target.engine else target.base_url)
        self._holders.move_to_end(response_id)
        while len(self._holders) > self.limit:
            self._holders.popitem(last=False)

    def holder(self, response_id: str) -> Holder | None:
        return self._holders.get(response_id)

    def watcher(self, model: str, target: Target) -> Callable[[bytes], bool]:
        """What reads the id out of an answer from `target` (an engine, or an upstream URL):
        called with the whole body, or with each run of whole events of a stream until it
        returns True (found, or past the first event, which carries it)."""
        def watch(data: bytes) -> bool:
            found = answer_id(data)
            if found:
                self.remember(found, model, target)
            return found is not None or b"data:" in data
        return watch


def answer_id(data: bytes) -> str | None:
    """The response id in a Responses answer: a JSON body's `id`, or, in a stream, that of
    `response.created` (its first event)."""
    stripped = data.lstrip()
    if stripped.startswith(b"{"):
        try:
            body = json.loads(stripped)
        except ValueError:
            return None
        return body.get("id") if isinstance(body, dict) and body.get("object") == "response" else None
    for line in stripped.splitlines():
        if not line.startswith(b"data:"):
            continue
        try:
            event = json.loads(line[5:])
        except ValueError:
            return None
        response = event.get("response") if isinstance(event, dict) else None
        return response.get("id") if isinstance(response, dict) else None
    return None

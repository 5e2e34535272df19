"""One conversation: the model, the system prompt, the turns, images waiting for the next
message, and the request each turn becomes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animllm_cli.chat.images import image_part
from animllm_cli.errors import UsageError


@dataclass
class Conversation:
    model: str
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)   # temperature, max_tokens, seed
    turns: list[dict[str, Any]] = field(default_factory=list)
    pending_images: list[dict[str, Any]] = field(default_factory=list)
    vision: bool | None = None    # None: unknown (not a configured model), so not checked

    def attach(self, path: str) -> None:
        if self.vision is False:
            raise UsageError(f"model '{self.model}' has no vision task; images go to a vision model",
                             hint="switch with /model (or pick a model whose tasks include vision)")
        self.pending_images.append(image_part(path))

    def user(self, text: str) -> dict[str, Any]:
        """Add the user's turn (with any attached images) and return the request body."""
        content: Any = text
        if self.pending_images:
            content = [{"type": "text", "text": text}, *self.pending_images]
            self.pending_images = []
        self.turns.append({"role": "user", "content": content})
        return self.payload()

    def payload(self) -> dict[str, Any]:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.turns
        return {"model": self.model, "messages": messages, **{k: v for k, v in self.params.items() if v is not None}}

    def answered(self, text: str) -> None:
        self.turns.append({"role": "assistant", "content": text})

    def drop_last_question(self) -> None:
        if self.turns and self.turns[-1]["role"] == "user":
            self.turns.pop()

    def clear(self) -> None:
        self.turns.clear()
        self.pending_images.clear()

    def save(self, path: Path) -> None:
        messages = self.payload()["messages"]
        if path.suffix == ".json":
            path.write_text(json.dumps({"model": self.model, "messages": messages}, indent=2) + "\n")
            return
        parts = [f"# Chat with {self.model}\n"]
        for message in messages:
            content = message["content"]
            if isinstance(content, list):
                content = " ".join(p.get("text", "[image]") if p["type"] == "text" else "[image]" for p in content)
            parts.append(f"## {message['role']}\n\n{content}\n")
        path.write_text("\n".join(parts))

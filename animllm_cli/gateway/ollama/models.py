"""A configured model in Ollama's terms (`/api/tags`, `/api/show`, `/api/ps`), read from its
files: the config.json of its local directory or its snapshot in the Hugging Face cache,
its generation_config.json (vLLM's default sampling, Ollama's `parameters`) and its chat
template; its engine flags say what it can do (a reasoning parser: thinking; a tool parser:
tools). A model served elsewhere, or one not downloaded yet, is described by its config
alone, and its capabilities are left to its engine to judge (none is refused here).
Read on each call: these are a few small files, and a pull changes them.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from animllm_cli.config import LoadedConfig, ModelView
from animllm_cli.engine.model_kind import serves
from animllm_cli.gpu.model_facts import facts_for
from animllm_cli.gpu.planner import cached
from animllm_cli.gateway.ollama.requests import Capabilities

EVERYTHING = Capabilities(thinking=True, tools=True, vision=True)
# generation_config.json's keys as Ollama's parameter names
PARAMETERS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
              "repetition_penalty": "repeat_penalty", "max_new_tokens": "num_predict"}
SIZE_IN_NAME = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?)\s*([BM])(?![a-z])", re.IGNORECASE)
DTYPE_LEVELS = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


def wall_time(seconds: float) -> str:
    """A Unix time as Go writes a time.Time (RFC 3339, UTC)."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def _flags(view: ModelView) -> set[str]:
    """The vLLM flags its engine is given (extra_args), as vLLM's own names."""
    return {str(key).lstrip("-").replace("-", "_") for key, value in view.spec.extra_args.items()
            if value not in (None, False)}


def _json(folder: Path | None, name: str) -> dict[str, Any]:
    try:
        found = json.loads((folder / name).read_text()) if folder else {}
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


@dataclass
class Described:
    """One model as Ollama's API shows it."""
    name: str
    view: ModelView
    folder: Path | None                       # its files here, if any
    config: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0                   # the gateway's start: a remote model's modified_at

    @property
    def family(self) -> str:
        return str(self.config.get("model_type") or "")

    @property
    def text_config(self) -> dict[str, Any]:
        """A vision model's language half holds its sizes (Qwen2.5-VL keeps them at the top, others nest them)."""
        nested = self.config.get("text_config")
        return nested if isinstance(nested, dict) else self.config

    def capabilities(self) -> Capabilities:
        if self.view.remote or not self.config:
            return EVERYTHING
        flags = _flags(self.view)
        architectures = " ".join(self.config.get("architectures") or [])
        vision = "vision_config" in self.config or any(mark in architectures for mark in ("VL", "Vision", "Llava"))
        return Capabilities(thinking="reasoning_parser" in flags,
                            tools={"tool_call_parser", "enable_auto_tool_choice"} <= flags, vision=vision)

    def capability_names(self) -> list[str]:
        if self.view.remote:
            return ["completion"]
        kinds = serves(self.view.spec.extra_args, self.config.get("architectures"))
        own = self.capabilities()
        names = ["embedding"] if "pooling" in kinds else ["completion"] if "generate" in kinds else []
        return names + [name for name, has in (("vision", own.vision), ("tools", own.tools),
                                               ("thinking", own.thinking)) if has and self.config]

    def context_length(self) -> int:
        return int(self.view.settings.get("max_model_len") or self.text_config.get("max_position_embeddings") or 0)

    def weight_bytes(self) -> int:
        if self.folder is None:
            return 0
        files = sorted(self.folder.glob("*.safetensors")) or sorted(self.folder.glob("*.bin"))
        return sum(f.stat().st_size for f in files if f.exists())

    def details(self) -> dict[str, Any]:
        quantization = self.view.settings.get("quantization") or \
            (self.config.get("quantization_config") or {}).get("quant_method")
        dtype = str(self.text_config.get("torch_dtype") or self.config.get("torch_dtype") or "")
        return {"parent_model": "", "format": "safetensors" if self.folder else "",
                "family": self.family, "families": [self.family] if self.family else None,
                "parameter_size": self.parameter_size(),
                "quantization_level": (quantization or DTYPE_LEVELS.get(dtype, dtype)).upper()}

    def parameter_size(self) -> str:
        """"7.6B", "494M": from its name where it says it, else its weights' bytes per element."""
        named = SIZE_IN_NAME.search(Path(self.view.engine_source).name)
        if named:
            return f"{named.group(1)}{named.group(2).upper()}"
        try:
            facts = facts_for(self.view.engine_source, self.folder) if self.folder else None
        except Exception:  # noqa: BLE001 - a weights file half written must not fail a listing
            facts = None
        if facts is None or not facts.weight_bytes:
            return ""
        count = facts.weight_bytes / facts.dtype_bytes
        return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"

    def digest(self) -> str:
        """The same while the model's files are the same: its source at its snapshot."""
        at = self.folder.name if self.folder else self.view.spec.revision or ""
        return hashlib.sha256(f"{self.view.engine_source}@{at}".encode()).hexdigest()

    def modified_at(self) -> str:
        return wall_time(self.folder.stat().st_mtime if self.folder else self.started_at)

    def listing(self) -> dict[str, Any]:
        """Its entry in /api/tags."""
        entry = {"name": self.name, "model": self.name, "modified_at": self.modified_at(),
                 "size": self.weight_bytes(), "digest": self.digest(), "details": self.details(),
                 "capabilities": self.capability_names()}
        upstream = self.view.spec.upstream
        if upstream is not None:
            entry["remote_model"] = upstream.model or self.name
            entry["remote_host"] = upstream.urls[0]
        return entry

    def template(self) -> str:
        """Its chat template (Jinja, as vLLM applies it: not a Go template)."""
        found = _json(self.folder, "tokenizer_config.json").get("chat_template")
        if isinstance(found, list):  # named templates: the default one
            found = next((t.get("template") for t in found if isinstance(t, dict) and t.get("name") == "default"), None)
        if not found and self.folder and (self.folder / "chat_template.jinja").is_file():
            found = (self.folder / "chat_template.jinja").read_text()
        return found if isinstance(found, str) else ""

    def parameters(self) -> str:
        """vLLM's default sampling for it (its generation_config.json), as Ollama's parameter lines."""
        generation = _json(self.folder, "generation_config.json")
        lines = [f"{ollama:<30} {json.dumps(generation[key])}" for key, ollama in PARAMETERS.items()
                 if key in generation]
        if self.context_length():  # Continue reads the context length from here
            lines.insert(0, f"{'num_ctx':<30} {self.context_length()}")
        return "\n".join(lines)

    def model_info(self) -> dict[str, Any]:
        arch = self.family or "unknown"
        text = self.text_config
        info: dict[str, Any] = {"general.architecture": arch, "general.basename": self.view.engine_source,
                                f"{arch}.context_length": self.context_length()}
        for key, ours in (("hidden_size", "embedding_length"), ("num_hidden_layers", "block_count"),
                          ("num_attention_heads", "attention.head_count"),
                          ("num_key_value_heads", "attention.head_count_kv"), ("vocab_size", "vocab_size")):
            if isinstance(text.get(key), int):
                info[f"{arch}.{ours}"] = text[key]
        return info

    def show(self) -> dict[str, Any]:
        """Its /api/show answer."""
        shown: dict[str, Any] = {"details": self.details(), "model_info": self.model_info(),
                                 "capabilities": self.capability_names(), "modified_at": self.modified_at(),
                                 "template": self.template(), "parameters": self.parameters()}
        if self.view.spec.upstream is not None:
            shown.update(remote_model=self.view.spec.upstream.model or self.name,
                         remote_host=self.view.spec.upstream.urls[0])
        return {key: value for key, value in shown.items() if value or key == "model_info"}


def describe(loaded: LoadedConfig, name: str, started_at: float = 0.0) -> Described:
    """`name` described, found again within KEPT_S (each chat asks what its model can do;
    a pull that brings its files shows within that)."""
    key = (id(loaded), name)
    kept = _kept.get(key)
    if kept is not None and kept[0]() is loaded and time.monotonic() - kept[1] < KEPT_S:
        return kept[2]
    view = loaded.model(name)
    if view.remote:
        described = Described(name, view, None, {}, started_at or time.time())
    else:
        local = Path(view.engine_source).expanduser()
        folder = local if local.is_dir() else cached(loaded, view)
        described = Described(name, view, folder, _json(folder, "config.json"), started_at or time.time())
    _kept[key] = (weakref.ref(loaded), time.monotonic(), described)
    return described


KEPT_S = 30.0
_kept: dict[tuple[int, str], tuple[weakref.ref, float, Described]] = {}  # (config, model) -> when read, what

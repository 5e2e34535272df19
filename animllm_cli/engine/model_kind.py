"""What a model's engine serves: generation (chat, completions, responses, messages),
pooling (embeddings, score, rerank, classify) or transcription (audio), as vLLM decides it:
its runner where the model's flags name one (`extra_args`: `runner`, `convert`, or `task`
in older releases), else the architecture in the model's config.json. `/v1/models` lists it, so a
client can see which model takes which API before it asks.
"""

from __future__ import annotations

import json
from pathlib import Path

from animllm_cli.config import LoadedConfig, ModelView

POOLING_TASKS = frozenset({"embed", "embedding", "classify", "score", "reward", "pooling"})
POOLING_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ForMaskedLM", "ForRewardModel",
                    "Model", "ForEmbedding")


def serves(flags: dict, architectures: list[str] | None) -> list[str]:
    """generate | pooling | transcription, from the vLLM flags the model passes (its
    `extra_args`: runner, convert, or task before 0.10.2), else from its architectures (None:
    unknown, vLLM's default runner: generate)."""
    named = {str(key).lstrip("-").replace("-", "_"): value for key, value in flags.items()}
    runner, convert, task = named.get("runner"), named.get("convert"), named.get("task")
    if runner == "pooling" or convert in POOLING_TASKS or task in POOLING_TASKS:
        return ["pooling"]
    if task == "transcription":
        return ["transcription"]
    if runner == "generate" or task == "generate":
        return ["generate"]
    names = architectures or []
    if any("Whisper" in name for name in names):
        return ["transcription"]
    if names and all(name.endswith(POOLING_SUFFIXES) for name in names):
        return ["pooling"]
    return ["generate"]


def architectures(loaded: LoadedConfig, view: ModelView) -> list[str] | None:
    """The `architectures` of the model's config.json: a local directory, else its snapshot
    in the Hugging Face cache; None when neither is here or the file is unreadable."""
    from animllm_cli.gpu.planner import cached

    local = Path(view.engine_source).expanduser()
    folder = local if local.is_dir() else cached(loaded, view)
    try:
        found = json.loads((folder / "config.json").read_text()).get("architectures") if folder else None
    except (OSError, ValueError, AttributeError):
        return None
    return [str(name) for name in found] if isinstance(found, list) else None


def model_serves(loaded: LoadedConfig, name: str) -> list[str] | None:
    """What model `name` serves; None for a model served elsewhere (its upstream decides)."""
    view = loaded.model(name)
    if view.remote:
        return None
    return serves(view.spec.extra_args, architectures(loaded, view))

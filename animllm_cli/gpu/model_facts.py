"""The numbers the planner needs about a model, from the best source available:
a local directory (config.json and safetensors headers), the Hugging Face cache, or a
shipped model card."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from animllm_cli.gpu.model_cards import ModelCard, find_card

DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float8_e4m3fn": 1}
# Quantisation methods whose weights are already packed in the checkpoint.
PREQUANTISED = ("awq", "gptq", "compressed-tensors", "fp8", "bitsandbytes")


@dataclass
class ModelFacts:
    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    max_positions: int
    weight_bytes: int
    dtype_bytes: int                 # bytes per element of activations and the default KV cache
    quantization: str | None         # how the checkpoint's weights are stored (None: 16-bit)
    basis: str                       # where these numbers came from
    awq_variant: str | None = None
    present: bool = True             # the weights are on this machine (not only a shipped card)


def facts_for(source: str, cached: Path | None) -> ModelFacts | None:
    """`cached`: the model's complete snapshot in the Hugging Face cache the engine reads,
    at its revision (pull.hub.cached_snapshot), or None."""
    local = Path(source).expanduser()
    if local.is_dir() and (local / "config.json").is_file():
        return _from_directory(local, f"local files in {local}")
    card = find_card(source)
    if cached is not None:
        facts = _from_directory(cached, f"Hugging Face cache {cached}")
        if facts and card:
            facts.awq_variant = card.awq_variant
        return facts
    return _from_card(card) if card else None


def _from_card(card: ModelCard) -> ModelFacts:
    return ModelFacts(card.layers, card.kv_heads, card.head_dim, card.hidden, card.intermediate, card.vocab,
                      card.max_positions, card.weight_bytes, 2, card.quantization,
                      f"model card {card.repo} ({card.weight_basis})", card.awq_variant, present=False)


def _weight_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))


def safetensors_bytes(path: Path) -> int:
    """Bytes of tensor data, from the file's JSON header (no tensor is read)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return sum(end - start for name, info in header.items() if name != "__metadata__"
               for start, end in [info["data_offsets"]])


def _from_directory(directory: Path, basis: str) -> ModelFacts | None:
    config = json.loads((directory / "config.json").read_text())
    text = config.get("text_config") or config  # vision-language models nest the language model
    heads = text.get("num_attention_heads")
    if not heads or "num_hidden_layers" not in text:
        return None
    files = _weight_files(directory)
    weight_bytes = sum(safetensors_bytes(f) if f.suffix == ".safetensors" else f.stat().st_size for f in files)
    quant = (config.get("quantization_config") or {}).get("quant_method")
    dtype = str(text.get("torch_dtype") or text.get("dtype") or config.get("torch_dtype") or "bfloat16")
    return ModelFacts(
        layers=text["num_hidden_layers"], kv_heads=text.get("num_key_value_heads") or heads,
        head_dim=text.get("head_dim") or text["hidden_size"] // heads, hidden=text["hidden_size"],
        intermediate=text.get("intermediate_size", 4 * text["hidden_size"]), vocab=text.get("vocab_size", 0),
        max_positions=text.get("max_position_embeddings", 0), weight_bytes=weight_bytes,
        dtype_bytes=DTYPE_BYTES.get(dtype.replace("torch.", ""), 2), quantization=quant, basis=basis)

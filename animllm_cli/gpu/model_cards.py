"""Known models, for planning before anything is downloaded.

Architecture numbers come from each model's config.json on the Hugging Face hub; weight
sizes from the published file lists (bytes as listed, GB = 10^9), except where
`weight_basis` says "estimate". A local copy of the model always wins over a card.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelCard:
    repo: str
    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    max_positions: int
    weight_bytes: int
    quantization: str | None = None     # None: bf16 weights
    weight_basis: str = "published file sizes"
    awq_variant: str | None = None      # a quantised repo of the same model, for suggestions


_QWEN7B = dict(layers=28, kv_heads=4, head_dim=128, hidden=3584, intermediate=18944, vocab=152064)
_QWEN14B = dict(layers=48, kv_heads=8, head_dim=128, hidden=5120, intermediate=13824, vocab=152064)
_QWEN72B = dict(layers=80, kv_heads=8, head_dim=128, hidden=8192, intermediate=29568, vocab=152064)

CARDS: tuple[ModelCard, ...] = (
    ModelCard("Qwen/Qwen2.5-7B-Instruct", **_QWEN7B, max_positions=32768, weight_bytes=15_231_000_000,
              awq_variant="Qwen/Qwen2.5-7B-Instruct-AWQ"),
    ModelCard("Qwen/Qwen2.5-7B-Instruct-AWQ", **_QWEN7B, max_positions=32768, weight_bytes=5_570_000_000,
              quantization="awq"),
    ModelCard("Qwen/Qwen2.5-Coder-7B-Instruct", **_QWEN7B, max_positions=32768, weight_bytes=15_231_000_000,
              awq_variant="Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"),
    ModelCard("Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", **_QWEN7B, max_positions=32768, weight_bytes=5_570_000_000,
              quantization="awq", weight_basis="estimate: same layout as Qwen2.5-7B-Instruct-AWQ"),
    ModelCard("Qwen/Qwen2.5-VL-7B-Instruct", **_QWEN7B, max_positions=128000, weight_bytes=16_600_000_000,
              weight_basis="estimate: ~16.6 GB, not from the official file list",
              awq_variant="Qwen/Qwen2.5-VL-7B-Instruct-AWQ"),
    ModelCard("Qwen/Qwen2.5-VL-7B-Instruct-AWQ", **_QWEN7B, max_positions=128000, weight_bytes=6_900_000_000,
              quantization="awq", weight_basis="estimate: AWQ language model plus a bf16 vision tower"),
    ModelCard("Qwen/Qwen2.5-14B-Instruct", **_QWEN14B, max_positions=32768, weight_bytes=29_570_000_000,
              awq_variant="Qwen/Qwen2.5-14B-Instruct-AWQ"),
    ModelCard("Qwen/Qwen2.5-14B-Instruct-AWQ", **_QWEN14B, max_positions=32768, weight_bytes=9_980_000_000,
              quantization="awq"),
    ModelCard("Qwen/Qwen2.5-72B-Instruct", **_QWEN72B, max_positions=32768, weight_bytes=145_400_000_000,
              weight_basis="estimate: 72.7B parameters in bf16", awq_variant="Qwen/Qwen2.5-72B-Instruct-AWQ"),
    ModelCard("Qwen/Qwen2.5-72B-Instruct-AWQ", **_QWEN72B, max_positions=32768, weight_bytes=41_000_000_000,
              quantization="awq", weight_basis="estimate: ~41 GB"),
)


def find_card(repo: str) -> ModelCard | None:
    wanted = repo.strip().lower()
    return next((card for card in CARDS if card.repo.lower() == wanted), None)

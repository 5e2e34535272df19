"""Build tiny Qwen2 models locally: random weights, a byte-level BPE tokenizer trained on
the spot, and a chat template. No download. Their output is noise, but vLLM loads,
schedules and streams them for real, which is what the demo and the engine tests need.

Shape (from what vLLM's CPU build accepts): hidden 128, 2 attention heads of dim 64 (CPU
attention rejects head_dim 16), 1 KV head, bf16. KV bytes per token = 2 x layers x 1 x 64 x 2.
Needs torch, transformers and tokenizers, which the vLLM install brings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKER = "animllm-tiny.json"


@dataclass(frozen=True)
class TinySpec:
    name: str
    seed: int
    layers: int = 2
    hidden: int = 128
    heads: int = 2
    kv_heads: int = 1
    intermediate: int = 256
    vocab: int = 512
    max_positions: int = 4096

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2  # K and V, bf16


# Distinct models, so that switching between them can be tested and seen; three, so that
# two can stay loaded together while a third evicts one.
TINY_MODELS = (TinySpec("tiny-a", seed=1, layers=2), TinySpec("tiny-b", seed=2, layers=3),
               TinySpec("tiny-c", seed=3, layers=2))


def _corpus() -> list[str]:
    words = ("the model switches on demand while the gateway keeps every request in order "
             "a frame of animation renders on the studio workstation with sixteen gigabytes "
             "vision reasoning and code share one card so only one model fits at a time "
             "hello world assistant user system answer question token cache memory").split()
    return [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4


def _build_tokenizer(spec: TinySpec):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE, model_max_length=spec.max_positions)


def build_tiny_model(dest: Path, spec: TinySpec) -> Path:
    """Write the model to `dest` (once: an existing complete build is reused)."""
    marker = dest / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec.__dict__:
        return dest
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars are noise in a demo

    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(spec)
    tokenizer.save_pretrained(dest)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(
        vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions, tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=eos,
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=eos, bos_token_id=config.bos_token_id)
    model.save_pretrained(dest, safe_serialization=True)
    marker.write_text(json.dumps(spec.__dict__))
    return dest


def build_tiny_models(root: Path) -> dict[str, Path]:
    return {spec.name: build_tiny_model(root / spec.name, spec) for spec in TINY_MODELS}

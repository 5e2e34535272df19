"""animllm: a single-GPU, multi-model LLM backend on vLLM."""

__version__ = "0.1.0"

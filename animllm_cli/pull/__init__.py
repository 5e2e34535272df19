"""`animllm pull`'s library side: fetch a model's files from the Hugging Face hub into the
cache the engine reads, as the engine would look for them (its environment: HF_HOME,
HF_HUB_CACHE, HF_ENDPOINT, HF_HUB_OFFLINE, the token), resumable across runs.

`hub` reads those settings and knows the cache layout; `transfer` moves one file;
`models` plans and pulls whole models and types the results."""

from __future__ import annotations

from animllm_cli.pull.models import ModelPull, PulledFile, PullProgress, PullReport, ensure_present, pull_models

__all__ = ["ModelPull", "PulledFile", "PullProgress", "PullReport", "ensure_present", "pull_models"]

"""Configuration: schema, layered loading with provenance, and the engine command builder."""

from animllm_cli.config.loader import LoadedConfig, ModelView, Overrides, load_config

__all__ = ["LoadedConfig", "ModelView", "Overrides", "load_config"]

"""Configuration as data: the schema, layered loading with provenance, validation, the catalogue."""

from animllm_cli.config.loaded import LoadedConfig, ModelView
from animllm_cli.config.loader import Overrides, load_config

__all__ = ["LoadedConfig", "ModelView", "Overrides", "load_config"]

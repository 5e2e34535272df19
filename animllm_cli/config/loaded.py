"""A loaded configuration: the validated model, the layered tree that says where each value
came from, and each model's view (its settings with their sources, its names)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animllm_cli.config import schema
from animllm_cli.config.catalogue import Catalogue
from animllm_cli.config.provenance import KeyPath, LayeredTree, Source


@dataclass
class ModelView:
    """One model with its profile merged in: what the engine will actually be given."""

    name: str
    spec: schema.ModelSpec
    settings: dict[str, Any]          # effective tunables that are set (None ones left out)
    sources: dict[str, Source]        # where each setting came from
    engine_source: str                # the model path or repo id handed to vLLM
    served_names: list[str]           # what the engine answers to: the name, then the aliases

    @property
    def profile(self) -> str | None:
        return self.spec.profile

    @property
    def remote(self) -> bool:
        return self.spec.upstream is not None


@dataclass
class LoadedConfig:
    config: schema.AnimllmConfig
    tree: LayeredTree
    files: list[Path]
    dotenv: dict[str, tuple[str, Source]]
    base_dir: Path
    _catalogue: Catalogue | None = field(default=None, repr=False)

    def source_of(self, path: KeyPath) -> Source:
        return self.tree.source_of(path)

    def model_names(self) -> list[str]:
        return list(self.config.models)

    def local_model_names(self) -> list[str]:
        """The models whose engines animllm runs (the others are served elsewhere: `upstream`)."""
        return [name for name, spec in self.config.models.items() if not spec.remote]

    def remote_model_names(self) -> list[str]:
        return [name for name, spec in self.config.models.items() if spec.remote]

    @property
    def catalogue(self) -> Catalogue:
        """The one index of model names, aliases, sources and tasks (built at load)."""
        if self._catalogue is None:
            self._catalogue = Catalogue.from_models(self.config.models, self.config.default_model)
        return self._catalogue

    def model(self, wanted: str | None) -> ModelView:
        """The model a name, alias, source or task means (None: the default model)."""
        name = self.catalogue.resolve(wanted)
        spec = self.config.models[name]
        profile = self.config.profiles[spec.profile] if spec.profile else schema.Profile()
        settings: dict[str, Any] = {}
        sources: dict[str, Source] = {}
        # A remote model's profile gives it gateway keys (concurrency) only: its server has the engine.
        keys = schema.TUNABLE_KEYS if spec.upstream is None else \
            tuple(k for k in schema.TUNABLE_KEYS if k not in schema.LOCAL_ONLY_KEYS)
        for key in keys:
            own, inherited = getattr(spec, key), getattr(profile, key)
            if own is not None:
                settings[key], sources[key] = own, self.tree.source_of(("models", name, key))
            elif inherited is not None:
                settings[key], sources[key] = inherited, self.tree.source_of(("profiles", spec.profile, key))
        return ModelView(name, spec, settings, sources, self._engine_source(name, spec),
                         self.catalogue.served_names(name))

    def _engine_source(self, name: str, spec: schema.ModelSpec) -> str:
        """A local directory becomes an absolute path; anything else is a Hugging Face repo id.
        A remote model has none: its name there stands in."""
        if spec.upstream is not None or spec.source is None:
            return spec.upstream.model or name if spec.upstream else name
        src = spec.source
        if src.startswith(("/", "./", "../", "~")) or src in (".", ".."):
            return str(self.resolve_path(("models", name, "source"), src))
        if self.config.paths.models:
            candidate = Path(self.config.paths.models) / src
            if candidate.is_dir():
                return str(candidate)
        return src

    def resolve_path(self, key: KeyPath, raw: str) -> Path:
        """Expand ~ and $VARS; a relative path is relative to the file that set it."""
        expanded = Path(os.path.expandvars(os.path.expanduser(raw)))
        if expanded.is_absolute():
            return expanded
        source = self.tree.source_of(key)
        base = Path(source.origin).parent if source.kind in ("file", "default") else self.base_dir
        return (base / expanded).resolve()

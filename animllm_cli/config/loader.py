"""Load the configuration: find the files, layer them, validate, and explain every value.

Precedence, highest first:
  CLI flags  >  environment overrides  >  user config files  >  the shipped default.

- User files: `--config PATH` or `ANIMLLM_CONFIG` (that file alone); otherwise
  `<user config dir>/animllm.yaml` and then `./animllm.yaml`, each where it exists.
  A file that says `inherit_defaults: false` stands alone, without the layers below it.
- Environment: `ANIMLLM_SECTION__KEY[__KEY...]=value` sets any key (values read as YAML,
  so `8192` is a number and `[a, b]` a list); the seed's `GPU_MEMORY_UTILIZATION`,
  `MAX_NUM_BATCHED_TOKENS` and `MAX_NUM_SEQS` set that key on every model.
- Flags: `--set key.path=value`, and per-setting flags that commands offer.
- A `.env` file beside each user file joins the engine's environment (not the config).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from animllm_cli import paths
from animllm_cli.config import schema
from animllm_cli.config.catalogue import Catalogue
from animllm_cli.config.loaded import LoadedConfig
from animllm_cli.config.provenance import KeyPath, Layer, LayeredTree, Source, set_path
from animllm_cli.config.validation import check_references, validate
from animllm_cli.config.yamlfile import load_yaml
from animllm_cli.errors import ConfigError, UsageError

ENV_PREFIX = "ANIMLLM_"
# The seed's troubleshooting names these; each applies to every model.
SEED_ENV_OVERRIDES = {
    "GPU_MEMORY_UTILIZATION": "gpu_memory_utilization",
    "MAX_NUM_BATCHED_TOKENS": "max_num_batched_tokens",
    "MAX_NUM_SEQS": "max_num_seqs",
}


@dataclass
class Overrides:
    """The command line's layer: `--set key.path=value` and per-setting flags."""

    sets: list[str] = field(default_factory=list)
    settings: dict[str, tuple[Any, str]] = field(default_factory=dict)  # key -> (value, flag as typed)
    model: str | None = None  # settings apply to this model (name or alias) only; None: every model


def load_config(config_path: Path | str | None = None, *, overrides: Overrides | None = None,
                environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> LoadedConfig:
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    overrides = overrides or Overrides()

    files = find_user_files(config_path or environ.get("ANIMLLM_CONFIG") or None, cwd)
    layers = [_file_layer(paths.shipped_config(), "default")]
    for file in files:
        layer = _file_layer(file, "file")
        if not _inherits_defaults(layer, file):
            layers = []
        layers.append(layer)
    tree = LayeredTree()
    for layer in layers:
        tree.merge(layer)
    tree.merge(_env_layer(environ, tree.data))
    tree.merge(_flag_layer(overrides, tree.data))
    _drop_removed_entries(tree.data)

    config = validate(tree)
    loaded = LoadedConfig(config, tree, files, {}, cwd)
    check_references(loaded)
    loaded.catalogue  # built once, after the names were checked
    _resolve_paths(loaded)
    loaded.dotenv = _load_dotenv(files)
    return loaded


def find_user_files(explicit: Path | str | None, cwd: Path) -> list[Path]:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "not found"
            raise ConfigError([f"{path}: config file {what}"],
                              hint="check the path given by --config or ANIMLLM_CONFIG")
        return [path.resolve()]
    candidates = [paths.config_dir() / "animllm.yaml", cwd / "animllm.yaml"]
    found: list[Path] = []
    for candidate in candidates:
        if candidate.is_file() and candidate.resolve() not in found:
            found.append(candidate.resolve())
    return found


def _file_layer(path: Path, kind: str) -> Layer:
    data, lines = load_yaml(path)
    sources = {key: Source(kind, str(path), line) for key, line in lines.items()}  # type: ignore[arg-type]
    return Layer(data, sources)


def _inherits_defaults(layer: Layer, file: Path) -> bool:
    value = layer.data.pop("inherit_defaults", True)
    if not isinstance(value, bool):
        line = layer.sources[("inherit_defaults",)].line
        raise ConfigError([f"{file}:{line}: inherit_defaults: must be true or false (got {value!r})"])
    return value


def parse_value(text: str) -> Any:
    """Read an override's value as YAML, so numbers, booleans and lists keep their type."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _match_path(current: dict[str, Any], segments: list[str], *, from_env: bool) -> KeyPath:
    """Match each segment to an existing key, ignoring case; new keys are lower case,
    except environment variable names under `env`, which keep their case."""
    path: list[str] = []
    node: Any = current
    for segment in segments:
        existing = next((k for k in node if k.lower() == segment.lower()), None) if isinstance(node, dict) else None
        if existing is None:
            existing = segment if path == ["env"] or not from_env else segment.lower()
        path.append(existing)
        node = node.get(existing) if isinstance(node, dict) else None
    return tuple(path)


def _env_layer(environ: Mapping[str, str], current: dict[str, Any]) -> Layer:
    data: dict[str, Any] = {}
    sources: dict[KeyPath, Source] = {}
    for var, key in SEED_ENV_OVERRIDES.items():
        if environ.get(var, "").strip():
            for model in _local_models(current):
                path = ("models", model, key)
                set_path(data, path, parse_value(environ[var]))
                _record(sources, path, Source("env", var, fanout=True))
    for var in sorted(environ):
        if not (var.startswith(ENV_PREFIX) and "__" in var) or not environ[var].strip():
            continue
        segments = var[len(ENV_PREFIX):].split("__")
        if not all(segments):
            raise ConfigError([f"env {var}: empty key between '__' separators"],
                              hint="write ANIMLLM_SECTION__KEY, for example ANIMLLM_SERVER__PORT=9000")
        path = _match_path(current, segments, from_env=True)
        set_path(data, path, parse_value(environ[var]))
        _record(sources, path, Source("env", var))
    return Layer(data, sources)


def _flag_layer(overrides: Overrides, current: dict[str, Any]) -> Layer:
    data: dict[str, Any] = {}
    sources: dict[KeyPath, Source] = {}
    if overrides.settings:
        models = current.get("models") or {}
        # The same catalogue every command resolves by, over the layers below the flags.
        targets = ([Catalogue.from_models(models).resolve(overrides.model)] if overrides.model is not None
                   else _local_models(current))
        for key, (value, flag) in overrides.settings.items():
            for model in targets:
                set_path(data, ("models", model, key), value)
                _record(sources, ("models", model, key), Source("flag", flag, fanout=overrides.model is None))
    for item in overrides.sets:
        dotted, sep, raw = item.partition("=")
        if not sep or not dotted.strip():
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, for example --set server.port=9000")
        path = _match_path(current, dotted.strip().split("."), from_env=False)
        set_path(data, path, parse_value(raw))
        _record(sources, path, Source("flag", f"--set {item}"))
    return Layer(data, sources)


def _local_models(current: dict[str, Any]) -> list[str]:
    """The models an engine setting fanned out to every model applies to: not the remote ones."""
    models = current.get("models")
    return [name for name, spec in models.items() if not (isinstance(spec, dict) and "upstream" in spec)] \
        if isinstance(models, dict) else []


def _record(sources: dict[KeyPath, Source], path: KeyPath, source: Source) -> None:
    """Record the source of `path` and, where nobody else did, of the keys above it,
    so that an error about `servr` in ANIMLLM_SERVR__PORT still names that variable."""
    sources[path] = source
    for cut in range(1, len(path)):
        sources.setdefault(path[:cut], source)


def _drop_removed_entries(data: dict[str, Any]) -> None:
    """`models: {name: null}` in a higher layer removes a model (likewise profiles)."""
    for section in ("models", "profiles", "expectations"):
        entries = data.get(section)
        if isinstance(entries, dict):
            for name in [n for n, v in entries.items() if v is None]:
                del entries[name]


def _resolve_paths(loaded: LoadedConfig) -> None:
    section = loaded.config.paths
    for key in schema.PathsSection.model_fields:
        raw = getattr(section, key)
        if raw:
            setattr(section, key, str(loaded.resolve_path(("paths", key), raw)))
    for name, spec in loaded.config.models.items():
        if spec.upstream is not None and spec.upstream.ca_bundle:
            spec.upstream.ca_bundle = str(loaded.resolve_path(("models", name, "upstream", "ca_bundle"),
                                                              spec.upstream.ca_bundle))


def _load_dotenv(files: list[Path]) -> dict[str, tuple[str, Source]]:
    values: dict[str, tuple[str, Source]] = {}
    candidates = [file.parent / ".env" for file in files]
    for candidate in dict.fromkeys(candidates):
        if candidate.is_file():
            from dotenv import dotenv_values  # only when a .env exists

            for key, value in dotenv_values(candidate).items():
                if value is not None:
                    values[key] = (value, Source("dotenv", str(candidate)))
    return values

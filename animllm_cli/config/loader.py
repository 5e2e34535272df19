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
from pydantic import BaseModel, ValidationError

from animllm_cli import paths
from animllm_cli.config import schema
from animllm_cli.config.catalogue import Catalogue
from animllm_cli.config.provenance import KeyPath, Layer, LayeredTree, Source, set_path
from animllm_cli.config.yamlfile import load_yaml
from animllm_cli.errors import ConfigError, UsageError

ENV_PREFIX = "ANIMLLM_"
# The seed's troubleshooting names these; each applies to every model.
SEED_ENV_OVERRIDES = {
    "GPU_MEMORY_UTILIZATION": "gpu_memory_utilization",
    "MAX_NUM_BATCHED_TOKENS": "max_num_batched_tokens",
    "MAX_NUM_SEQS": "max_num_seqs",
}
# Flags animllm sets itself; a model's extra_args may not set them.
MANAGED_FLAGS = {"model", "model_tag", "served_model_name", "host", "port", "api_key"}


@dataclass
class Overrides:
    """The command line's layer: `--set key.path=value` and per-setting flags."""

    sets: list[str] = field(default_factory=list)
    settings: dict[str, tuple[Any, str]] = field(default_factory=dict)  # key -> (value, flag as typed)
    model: str | None = None  # settings apply to this model (name or alias) only; None: every model


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

    config = _validate(tree)
    loaded = LoadedConfig(config, tree, files, {}, cwd)
    _check_references(loaded)
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


# ---------------------------------------------------------------------------- validation

_SECTION_CLASSES: dict[KeyPath, type[BaseModel]] = {
    (): schema.AnimllmConfig,
    ("gpu",): schema.GpuSection,
    ("runtime",): schema.RuntimeSection,
    ("engine",): schema.EngineSection,
    ("paths",): schema.PathsSection,
    ("limits",): schema.LimitsSection,
    ("server",): schema.ServerSection,
    ("scheduler",): schema.SchedulerSection,
    ("pool",): schema.PoolSection,
    ("profiles", "*"): schema.Profile,
    ("models", "*"): schema.ModelSpec,
    ("models", "*", "upstream"): schema.UpstreamSpec,
    ("expectations", "*"): schema.Expectation,
}


def _allowed_keys(parent: KeyPath) -> list[str]:
    generic = parent[:1] + ("*",) + parent[2:] if len(parent) >= 2 and parent[0] in ("profiles", "models") else parent
    cls = _SECTION_CLASSES.get(generic)
    keys = list(cls.model_fields) if cls else []
    return keys + (["inherit_defaults"] if parent == () else [])


def _validate(tree: LayeredTree) -> schema.AnimllmConfig:
    try:
        return schema.AnimllmConfig.model_validate(tree.data)
    except ValidationError as exc:
        problems = [_describe(error, tree) for error in exc.errors()]
        raise ConfigError(list(dict.fromkeys(problems))) from None


def _describe(error: Any, tree: LayeredTree) -> str:
    loc = tuple(str(part) for part in error["loc"])
    if loc and loc[-1] == "[key]":  # a bad name used as a dict key
        loc = loc[:-1]
        return _problem(tree, loc, f"invalid name {loc[-1]!r}: use letters, digits, '-' and '_'")
    kind = error["type"]
    if kind == "extra_forbidden":
        message = f"unknown key; allowed keys: {', '.join(_allowed_keys(loc[:-1]))}"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if kind != "url_not_echoed" and (not isinstance(value, (dict, list)) or kind.endswith("_type")):
            message += f" (got {value!r})"
    return _problem(tree, loc, message)


def _problem(tree: LayeredTree, loc: KeyPath, message: str) -> str:
    source = tree.source_of(loc, for_error=True)
    dotted = ".".join(loc)
    if source.fanout:
        dotted = ".".join(("models", "*", *loc[2:]))  # one override fanned out to every model
    where = "built-in default" if source.kind == "builtin" else str(source)
    return f"{where}: {dotted}: {message}"


def _check_references(loaded: LoadedConfig) -> None:
    config, tree = loaded.config, loaded.tree
    profiles = sorted(config.profiles)
    claimed, problems = _claim_names(loaded)
    for name, spec in config.models.items():
        problems += _local_or_remote(loaded, name, spec)
        if spec.profile is not None and spec.profile not in config.profiles:
            problems.append(_problem(tree, ("models", name, "profile"),
                                     f"no such profile {spec.profile!r}; defined profiles: {', '.join(profiles) or '(none)'}"))
        for key in spec.extra_args:
            flag = key.lstrip("-").replace("-", "_")
            if flag in schema.TUNABLE_KEYS:
                problems.append(_problem(tree, ("models", name, "extra_args", key),
                                         f"{flag} is a model setting: write `{flag}:` on the model or its profile"))
            elif flag in MANAGED_FLAGS:
                problems.append(_problem(tree, ("models", name, "extra_args", key),
                                         f"--{flag.replace('_', '-')} is set by animllm itself and cannot be overridden"))
    if config.default_model and config.default_model.lower() not in claimed:
        problems.append(_problem(tree, ("default_model",),
                                 f"no model or alias named {config.default_model!r}; models: {', '.join(config.models) or '(none)'}"))
    for index, wanted in enumerate(config.pool.preload):
        if wanted.lower() not in claimed:
            problems.append(_problem(tree, ("pool", "preload"), f"item {index + 1}: no model or alias named "
                                                              f"{wanted!r}; models: {', '.join(config.models) or '(none)'}"))
    for name, spec in config.models.items():
        tp = spec.tensor_parallel_size or getattr(config.profiles.get(spec.profile), "tensor_parallel_size", None)
        if spec.gpus is not None and tp and len(spec.gpus) != tp:
            problems.append(_problem(tree, ("models", name, "gpus"), f"names {len(spec.gpus)} GPU(s) but "
                                                                    f"tensor_parallel_size is {tp}; make them agree"))
    for profile in config.expectations:
        if profile not in config.profiles:
            problems.append(_problem(tree, ("expectations", profile),
                                     f"expectations are per profile and there is no profile {profile!r}; "
                                     f"defined profiles: {', '.join(profiles) or '(none)'}"))
    if problems:
        raise ConfigError(problems)


def _local_or_remote(loaded: LoadedConfig, name: str, spec: schema.ModelSpec) -> list[str]:
    """A model runs here (`source`, `profile`) or elsewhere (`upstream`). The keys of an
    engine animllm runs mean nothing for a remote model: set by a layer below the one that
    made it remote (a shipped model moved to another machine) they are dropped; set beside
    or above `upstream` they are an error, as is `source` there."""
    tree, key = loaded.tree, ("models", name)
    if spec.upstream is None:
        if spec.source is None:
            return [_problem(tree, (*key, "source"), "required key is missing (or `upstream:` for a model served "
                                                     "elsewhere)")]
        return [] if spec.profile is not None else [_problem(tree, (*key, "profile"), "required key is missing")]
    made_remote = _rank(loaded, (*key, "upstream"))
    problems = []
    for setting in [f for f in (*schema.LOCAL_ONLY_KEYS, "profile") if f in spec.model_fields_set]:
        default = schema.ModelSpec.model_fields[setting].default
        if getattr(spec, setting) in (None, default) or _rank(loaded, (*key, setting)) < made_remote:
            setattr(spec, setting, default)
        elif setting == "source":
            problems.append(_problem(tree, (*key, "upstream"), "a model has `source` (its engine runs here) or "
                                                               "`upstream` (it is served elsewhere), not both"))
        elif setting != "profile":
            problems.append(_problem(tree, (*key, setting), "does not apply to a remote model (`upstream`): its "
                                                          "server decides; remove it"))
    return problems


_LAYER_RANK = {"builtin": 0, "default": 1, "file": 2, "dotenv": 3, "env": 4, "flag": 5}


def _rank(loaded: LoadedConfig, key: KeyPath) -> tuple[int, int]:
    """How high the layer that set `key` is (a later user file above an earlier one)."""
    source = loaded.tree.source_of(key)
    origin = Path(source.origin)
    return _LAYER_RANK[source.kind], loaded.files.index(origin) if source.kind == "file" and origin in loaded.files else 0


def _claim_names(loaded: LoadedConfig) -> tuple[dict[str, str], list[str]]:
    """Map each lower-cased name and alias to its model. Each must point at one model; when
    two claim it, the claim from the lower layer keeps it and the newer one is the error,
    since that is what the user just wrote."""
    tree = loaded.tree
    rank = lambda key: _rank(loaded, key)  # noqa: E731
    claims: dict[str, list[tuple[tuple[int, int], str, KeyPath]]] = {}
    for name, spec in loaded.config.models.items():
        claims.setdefault(name.lower(), []).append((rank(("models", name)), name, ("models", name)))
        for alias in spec.aliases:
            if alias.lower() != name.lower():
                key = ("models", name, "aliases")
                claims.setdefault(alias.lower(), []).append((rank(key), name, key))
    claimed: dict[str, str] = {}
    problems: list[str] = []
    for alias, owners in claims.items():
        owners = sorted(owners, key=lambda claim: claim[0])
        keeper = owners[0]
        for _, name, key in owners[1:]:
            if name != keeper[1]:
                problems.append(_problem(tree, key, f"alias {alias!r} is already claimed by model {keeper[1]!r} "
                                                    f"({tree.source_of(keeper[2])}); each name or alias must point "
                                                    f"at one model"))
        claimed[alias] = keeper[1]
    return claimed, problems


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

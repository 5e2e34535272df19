"""Validate a layered configuration, and say each problem as a user can act on it: the key,
the value, the file and line (or variable, or flag) it came from, and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from animllm_cli.config import schema
from animllm_cli.config.loaded import LoadedConfig
from animllm_cli.config.provenance import KeyPath, LayeredTree
from animllm_cli.errors import ConfigError

# Flags animllm sets itself; a model's extra_args may not set them.
MANAGED_FLAGS = {"model", "model_tag", "served_model_name", "host", "port", "api_key"}

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


def validate(tree: LayeredTree) -> schema.AnimllmConfig:
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


def check_references(loaded: LoadedConfig) -> None:
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
    for client, spec in config.clients.items():
        if client in ("server", "anonymous"):
            problems.append(_problem(tree, ("clients", client), f"'{client}' is the name of the gateway's own "
                                     f"{'key' if client == 'server' else 'keyless requests'}: name the client otherwise"))
        for index, wanted in enumerate(spec.models):
            if wanted.lower() not in claimed and not any(wanted in m.tasks for m in config.models.values()):
                problems.append(_problem(tree, ("clients", client, "models"),
                                         f"item {index + 1}: no model, alias or task named {wanted!r}; models: "
                                         f"{', '.join(config.models) or '(none)'}"))
        if spec.priority_max is not None and spec.priority_max < spec.priority:
            problems.append(_problem(tree, ("clients", client, "priority_max"),
                                     f"{spec.priority_max:g} is below the client's priority {spec.priority:g}: "
                                     f"a ceiling must be at least the default"))
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

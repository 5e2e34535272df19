"""Plain-data views of a loaded config, for `models`, `config show` and `--explain`.

These dicts are the documented JSON output; change their shape only with SCHEMA_VERSION.
"""

from __future__ import annotations

import os
from typing import Any, Mapping
from urllib.parse import urlsplit

from animllm_cli.credentials import masked
from animllm_cli.config import schema
from animllm_cli.engine.command import ENGINE_KEY_VAR, EngineCommand, PerLaunch, launch_command
from animllm_cli.config.loaded import LoadedConfig, ModelView
from animllm_cli.config.provenance import KeyPath, Source
from animllm_cli.errors import UsageError

SCHEMA_VERSION = 1


def models_report(loaded: LoadedConfig) -> dict[str, Any]:
    default = loaded.catalogue.resolve(None) if loaded.config.models and (
        loaded.config.default_model or len(loaded.config.models) == 1) else None
    return {
        "schema_version": SCHEMA_VERSION,
        "config_files": [str(f) for f in loaded.files],
        "default_model": default,
        "models": [_model_row(loaded.model(name), name == default) for name in loaded.model_names()],
    }


def _model_row(view: ModelView, is_default: bool) -> dict[str, Any]:
    return {
        "name": view.name,
        "default": is_default,
        "tasks": view.spec.tasks,
        "aliases": view.spec.aliases,
        "source": view.spec.source,
        "engine_source": view.engine_source,
        "profile": view.profile,
        "quantization": view.settings.get("quantization"),
        "kv_cache_dtype": view.settings.get("kv_cache_dtype"),
        "max_model_len": view.settings.get("max_model_len"),
        "gpu_memory_utilization": view.settings.get("gpu_memory_utilization"),
        "concurrency": view.settings.get("concurrency"),
        "description": view.spec.description,
        "upstream": _upstream_row(view),
    }


def _upstream_row(view: ModelView) -> dict[str, Any] | None:
    """Where a remote model is served: its URLs, its name there and the key's variable (never the key)."""
    spec = view.spec.upstream
    if spec is None:
        return None
    return {"urls": list(spec.urls), "model": spec.model or view.name, "api_key_env": spec.api_key_env}


def host_port(url: str) -> str:
    """`host:port` of an upstream URL, the scheme's port where it names none."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def config_report(loaded: LoadedConfig) -> dict[str, Any]:
    """The whole effective config, with secret environment values masked."""
    data = loaded.config.model_dump(mode="json")
    data["env"] = masked({k: v for k, v in data["env"].items() if v is not None})
    return data


def model_report(loaded: LoadedConfig, view: ModelView, command: EngineCommand) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "name": view.name,
        "source": view.spec.source,
        "engine_source": view.engine_source,
        "profile": view.profile,
        "tasks": view.spec.tasks,
        "aliases": view.spec.aliases,
        "settings": view.settings,
        "extra_args": view.spec.extra_args,
        "engine": {"argv": command.argv, "env": command.display_env(), "vllm": vllm_report(command)},
    }


def explain_config(loaded: LoadedConfig) -> list[dict[str, Any]]:
    """Every leaf of the effective config with the layer it came from."""
    rows: list[dict[str, Any]] = []
    _leaves(config_report(loaded), (), rows, loaded)
    return rows


def _leaves(node: Any, path: KeyPath, rows: list[dict[str, Any]], loaded: LoadedConfig) -> None:
    if isinstance(node, dict) and node and not _is_opaque(path):
        for key, value in node.items():
            _leaves(value, (*path, key), rows, loaded)
        return
    rows.append(_row(".".join(path), node, loaded.source_of(path)))


def _is_opaque(path: KeyPath) -> bool:
    """Dict-valued settings (limit_mm_per_prompt, an extra_args value) are one value each."""
    if len(path) >= 4:
        return True
    return len(path) == 3 and path[0] in ("models", "profiles") and path[2] != "extra_args"



def remote_model_report(view: ModelView, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A remote model as `config show` prints it: the upstream (whether the key's variable
    is set, never its value) in place of an engine command."""
    return {
        "schema_version": SCHEMA_VERSION,
        "name": view.name,
        "profile": view.profile,
        "tasks": view.spec.tasks,
        "aliases": view.spec.aliases,
        "settings": view.settings,
        "upstream": _upstream_details(view, environ),
    }


def _upstream_details(view: ModelView, environ: Mapping[str, str] | None) -> dict[str, Any]:
    spec = view.spec.upstream
    assert spec is not None
    details = spec.model_dump(mode="json")
    details["model"] = spec.model or view.name
    details["api_key"] = key_state(spec, environ)
    return details


def key_state(spec: schema.UpstreamSpec, environ: Mapping[str, str] | None = None) -> str | None:
    """"set" or "not set" for the variable `api_key_env` names (None: no key needed)."""
    if not spec.api_key_env:
        return None
    return "set" if (os.environ if environ is None else environ).get(spec.api_key_env) else "not set"


def explain_remote_model(loaded: LoadedConfig, view: ModelView) -> list[dict[str, Any]]:
    """Each upstream key and gateway setting of a remote model, with its source."""
    key = ("models", view.name)
    details = _upstream_details(view, None)
    rows = [_row(f"upstream.{name}", value, loaded.source_of((*key, "upstream", name)))
            for name, value in details.items() if name != "api_key"]
    if details["api_key"] is not None:  # whether the variable is set now, never its value
        rows.append(_row("upstream.api_key", details["api_key"], Source("env", view.spec.upstream.api_key_env)))
    rows += [_row("profile", view.profile, loaded.source_of((*key, "profile")))]
    rows += [_row(name, value, view.sources[name]) for name, value in view.settings.items()]
    return rows


def explain_model(loaded: LoadedConfig, view: ModelView, command: EngineCommand) -> list[dict[str, Any]]:
    """Each engine setting, extra flag and environment variable, with its source."""
    key = ("models", view.name)
    rows = [
        _row("source", view.engine_source, loaded.source_of((*key, "source"))),
        _row("profile", view.profile, loaded.source_of((*key, "profile"))),
    ]
    rows += [_row(name, value, view.sources[name]) for name, value in view.settings.items()]
    rows += [_row(f"extra_args.{name}", value, loaded.source_of((*key, "extra_args", name)))
             for name, value in view.spec.extra_args.items()]
    masked = command.display_env()
    rows += [_row(f"env.{var}", masked[var], source) for var, source in command.env_sources.items()]
    # The flags the gateway adds at each launch (the key's guard, sleep mode), and what the pool decides then.
    rows += [_row(args[0], " ".join(args[1:]) or True, source) for args, source in command.flag_sources
             if source.kind == "builtin" and source.origin]
    rows += [_row(key, None, source) for setting, (key, source) in POOL_DECIDES.items()
             if getattr(view.spec, setting) is None]
    return rows


def _row(key: str, value: Any, source: Source) -> dict[str, Any]:
    return {"key": key, "value": value, "source": source.to_json()}


def engine_command_for(loaded: LoadedConfig, wanted: str | None, port: int | None = None,
                       vllm_version: str | None = None) -> tuple[ModelView, EngineCommand]:
    """The command the gateway runs for a model, as far as the config decides it (see
    configured_launch), and the model as launched. `vllm_version`: spell the command for
    that release (default: the installed one)."""
    if vllm_version is not None:
        _require_version(vllm_version)
    view = loaded.model(wanted)
    if view.remote:
        raise UsageError(f"'{view.name}' is served elsewhere (upstream: {', '.join(view.spec.upstream.urls)}): "
                         f"it has no engine here, so no engine command or environment",
                         hint=f"see its upstream with: animllm config show {view.name}")
    per_launch = configured_launch(loaded, view)
    return per_launch.view_of(view), launch_command(loaded, view.name, per_launch, port=port, vllm_version=vllm_version)


def configured_launch(loaded: LoadedConfig, view: ModelView) -> PerLaunch:
    """What the config decides of the gateway's per-launch additions: the GPUs of a model
    pinned to some (`gpus:`), the share it sets (`share:`), and sleep mode (its `sleep:`
    and whether engines can sleep on this machine). The key is made anew at each launch
    (never printed: "$VLLM_API_KEY")."""
    from animllm_cli.engine import sleep
    from animllm_cli.engine.command import engine_python
    from animllm_cli.engine.python_env import probe_python_cached
    from animllm_cli.gpu import nvml

    key = ("models", view.name)
    support = sleep.platform_support(probe_python_cached(engine_python(loaded)), nvml.probe())
    able = sleep.launch_able(loaded, view.name, support)
    slept = Source("builtin", f"sleep: {view.spec.sleep}; engines {'can' if support.available else 'cannot'} sleep "
                              f"here ({support.reason})")
    return PerLaunch(gpus=tuple(view.spec.gpus) if view.spec.gpus else None, utilization=view.spec.share,
                     sleep_mode=able, sources={"gpus": loaded.source_of((*key, "gpus")),
                                               "utilization": loaded.source_of((*key, "share")), "sleep_mode": slept})


# What only the pool decides, at launch: --explain's rows for a model that leaves it to the pool.
POOL_DECIDES = {
    "gpus": ("env.CUDA_VISIBLE_DEVICES", Source("builtin", "the pool's at launch: the GPU it places the model on "
                                                           "(gpus: pins it)")),
    "share": ("share", Source("builtin", "the pool's at launch: the planner's smallest share, in place of "
                                         "gpu_memory_utilization, where the model can stay beside others "
                                         "(share: sets it)")),
}
PER_LAUNCH_KEY_NOTE = (f"{ENGINE_KEY_VAR}: the gateway makes a new key for each launch; "
                       f"set {ENGINE_KEY_VAR} to run the line by hand")


def _require_version(text: str) -> None:
    from packaging.version import InvalidVersion, Version

    try:
        Version(text)
    except InvalidVersion:
        raise UsageError(f"--vllm-version {text!r} is not a version number",
                         hint="give a release as pip spells it, for example 0.10.0") from None


def vllm_notes(command: EngineCommand) -> list[str]:
    """The command's notes on its vLLM release (engine/vllm_releases.notes)."""
    from animllm_cli.engine import vllm_releases

    return vllm_releases.notes(command.vllm, list(command.env), command.argv) if command.vllm else []


def vllm_report(command: EngineCommand) -> dict[str, Any] | None:
    coverage = command.vllm
    if coverage is None:
        return None
    return {"version": coverage.version or None,
            "checked_as": coverage.release.version if coverage.release else None,
            "notes": vllm_notes(command)}

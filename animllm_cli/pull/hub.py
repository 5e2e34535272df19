"""Where the engine would look for a model, and how it would reach the hub.

huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and HF_HOME into constants when it is
first imported, which may be before the config is loaded (or, in tests, in another test):
these settings are read here at call time, from the environment the engine gets (the
process's own plus the config's `paths:`, `env:` and `.env`), and handed to the library
explicitly."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from animllm_cli.config.loaded import LoadedConfig, ModelView

DEFAULT_ENDPOINT = "https://huggingface.co"
COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _is_true(value: str | None) -> bool:
    """huggingface_hub's reading of a boolean variable."""
    return value is not None and value.strip().upper() in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    cache_dir: Path                 # the hub cache: <cache_dir>/models--org--name/{blobs,snapshots,refs}
    offline: bool
    offline_from: str | None        # where HF_HUB_OFFLINE was set (for messages)
    token: str | None = field(default=None, repr=False)  # never printed, not even in a repr
    token_from: str | None = None   # HF_TOKEN, HUGGING_FACE_HUB_TOKEN or the token file's path
    modelscope: bool = False        # VLLM_USE_MODELSCOPE: the engine downloads from ModelScope instead

    @property
    def token_arg(self) -> str | bool:
        """For huggingface_hub: the token, or False (never its own import-time lookup)."""
        return self.token or False

    def repo_dir(self, repo: str) -> Path:
        return self.cache_dir / f"models--{repo.replace('/', '--')}"

    def locks_dir(self, repo: str) -> Path:
        return self.cache_dir / ".locks" / f"models--{repo.replace('/', '--')}"


def engine_env(loaded: LoadedConfig, environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """The engine's environment and, per variable the config sets, where it was set."""
    from animllm_cli.config.engine_env import engine_environment

    env, sources = engine_environment(loaded)
    merged = {**(os.environ if environ is None else environ), **env}
    return merged, {var: str(source) for var, source in sources.items()}


def hub_settings(loaded: LoadedConfig, environ: Mapping[str, str] | None = None) -> HubSettings:
    env, origins = engine_env(loaded, environ)

    def origin(var: str) -> str:
        return f"{var} ({origins[var]})" if var in origins else var

    offline_var = next((v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if env.get(v)), None)
    offline = _is_true(env.get(offline_var)) if offline_var else False
    token, token_from = _token(env)
    return HubSettings(endpoint=(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"), cache_dir=_cache_dir(env),
                       offline=offline, offline_from=origin(offline_var) if offline else None,
                       token=token, token_from=token_from, modelscope=_is_true(env.get("VLLM_USE_MODELSCOPE")))


def _expand(path: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(path)))


def _hf_home(env: Mapping[str, str]) -> Path:
    if env.get("HF_HOME"):
        return _expand(env["HF_HOME"])
    return _expand(env.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"


def _cache_dir(env: Mapping[str, str]) -> Path:
    """huggingface_hub's rule: HF_HUB_CACHE, its legacy name, else $HF_HOME/hub."""
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    return _expand(explicit) if explicit else _hf_home(env) / "hub"


def _token(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """huggingface_hub's `get_token()` order: HF_TOKEN, the legacy HUGGING_FACE_HUB_TOKEN,
    then the file `hf auth login` writes (HF_TOKEN_PATH, else $HF_HOME/token)."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if env.get(var, "").strip():
            return env[var].strip(), var
    path = _expand(env["HF_TOKEN_PATH"]) if env.get("HF_TOKEN_PATH") else _hf_home(env) / "token"
    try:
        text = path.read_text().strip()
    except OSError:
        return None, None
    return (text, str(path)) if text else (None, None)


def snapshot_commit(hub: HubSettings, repo: str, revision: str) -> str | None:
    """The commit a revision names in the cache (refs/<revision>), or the revision itself when it is a commit."""
    repo_dir = hub.repo_dir(repo)
    if COMMIT_HASH.match(revision) and (repo_dir / "snapshots" / revision).is_dir():
        return revision
    try:
        return (repo_dir / "refs" / revision).read_text().strip() or None
    except OSError:
        return None


def complete_snapshot(hub: HubSettings, repo: str, revision: str) -> Path | None:
    """The cached snapshot of `revision` if it holds what the engine needs: config.json and
    the weights (every shard an index names). No network: `serve` asks this first."""
    commit = snapshot_commit(hub, repo, revision)
    if commit is None:
        return None
    snapshot = hub.repo_dir(repo) / "snapshots" / commit
    if not (snapshot / "config.json").is_file():
        return None
    for index in (snapshot / "model.safetensors.index.json", snapshot / "pytorch_model.bin.index.json"):
        if index.is_file():
            import json

            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (ValueError, KeyError, TypeError, AttributeError):
                return None
            return snapshot if all((snapshot / shard).is_file() for shard in shards) else None
    weights = [p for p in snapshot.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    return snapshot if weights else None


def model_revision(view: ModelView) -> str:
    """The revision the engine loads: the model's (or its profile's) `revision`, else main."""
    return view.settings.get("revision") or "main"


def cached_snapshot(view: ModelView, hub: HubSettings) -> Path | None:
    """The model's complete snapshot in the cache the engine reads, at its revision; None
    for a local directory or a model not (wholly) there. The one test of "present" for
    pull, serve, plan and doctor."""
    source = view.engine_source
    if Path(source).is_absolute() or source.count("/") != 1:
        return None
    return complete_snapshot(hub, source, model_revision(view))

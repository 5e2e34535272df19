"""Pull whole models: which ones, which files, and what came of it."""

from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from animllm_cli.config.loaded import LoadedConfig, ModelView
from animllm_cli.errors import AnimllmError
from animllm_cli.pull.hub import COMMIT_HASH, HubSettings, cached_snapshot, complete_snapshot, hub_settings, model_revision

SAFETENSORS_INDEX = "model.safetensors.index.json"
# What vLLM never reads: other formats' weights, the original checkpoints some repos carry.
SKIPPED = ("original/*", "*.gguf", "*.onnx", "*.onnx_data", "*.msgpack", "*.h5", "*.ot", "*.pth", "*.pt",
           ".gitattributes")


class PullProgress:
    """What a pull reports as it goes; the CLI draws it (the default draws nothing)."""

    def model_started(self, pull: "ModelPull", missing: list["PulledFile"]) -> None: ...

    def file_started(self, model: str, file: "PulledFile", resume_from: int) -> None: ...

    def file_position(self, model: str, file: "PulledFile", on_disk: int) -> None: ...

    def file_finished(self, model: str, file: "PulledFile") -> None: ...


@dataclass
class PulledFile:
    path: str
    size: int | None
    status: str = "present"              # present | downloaded
    resumed_from: int | None = None      # bytes a partial file from an earlier pull already held

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelPull:
    model: str
    source: str
    revision: str | None = None
    status: str = "present"              # downloaded | present | local | remote | failed
    commit: str | None = None
    snapshot: str | None = None
    files: list[PulledFile] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)
    downloaded_bytes: int = 0
    total_bytes: int = 0
    seconds: float = 0.0
    note: str | None = None
    error: str | None = None
    hint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "files": [f.to_json() for f in self.files]}


@dataclass
class PullReport:
    hub: HubSettings
    models: list[ModelPull]
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if any(m.status == "failed" for m in self.models) else 0

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": 1, "endpoint": self.hub.endpoint, "cache_dir": str(self.hub.cache_dir),
                "offline": self.hub.offline, "token_from": self.hub.token_from,
                "models": [m.to_json() for m in self.models],
                "downloaded_bytes": sum(m.downloaded_bytes for m in self.models),
                "seconds": round(self.seconds, 3), "exit_code": self.exit_code}


# ---------------------------------------------------------------------- which models
def default_targets(loaded: LoadedConfig) -> list[str]:
    """Every model whose engine runs here and whose weights are not in the cache yet."""
    hub = hub_settings(loaded)
    wanted = []
    for name in loaded.local_model_names():
        view = loaded.model(name)
        if not _is_local_dir(view) and cached_snapshot(view, hub) is None:
            wanted.append(name)
    return wanted


def pull_models(loaded: LoadedConfig, names: list[str], *, revision: str | None = None,
                progress: PullProgress | None = None) -> PullReport:
    """Pull each model in turn. A failure is recorded in its row and the next one goes on;
    Ctrl-C (KeyboardInterrupt) goes through at once, the partial file kept for the next pull."""
    hub = hub_settings(loaded)
    started = time.monotonic()
    report = PullReport(hub, [])
    for name in names:
        view = loaded.model(name)
        report.models.append(_pull_one(loaded, hub, view, revision, progress or PullProgress()))
    report.seconds = time.monotonic() - started
    return report


def ensure_present(loaded: LoadedConfig, names: list[str], *, progress: PullProgress | None = None,
                   warn=lambda message: None) -> list[ModelPull]:
    """For `serve`: pull each hub model whose snapshot the cache lacks, before any engine
    starts, so its start phases time the start and not a download. A present model costs
    no request. Offline, a missing model is warned about and left to the engine."""
    hub = hub_settings(loaded)
    missing = []
    for name in dict.fromkeys(names):
        view = loaded.model(name)
        if view.remote or _is_local_dir(view) or cached_snapshot(view, hub):
            continue
        if hub.offline or hub.modelscope:
            why = f"{hub.offline_from} is set" if hub.offline else "VLLM_USE_MODELSCOPE is set"
            warn(f"{name} ({view.engine_source}) is not in the Hugging Face cache {hub.cache_dir} and {why}: "
                 f"not pulled, the engine looks for it itself")
            continue
        missing.append(name)
    if not missing:
        return []
    report = pull_models(loaded, missing, progress=progress)
    failed = next((m for m in report.models if m.status == "failed"), None)
    if failed:
        raise AnimllmError(f"pulling {failed.model} before the start failed: {failed.error}",
                           hint=(failed.hint + "; " if failed.hint else "") + "or start without pulling: serve --no-pull")
    return report.models


# ---------------------------------------------------------------------- one model
def _is_local_dir(view: ModelView) -> bool:
    return Path(view.engine_source).is_absolute()


def _revision_key(view: ModelView, override: str | None) -> str:
    """Where the revision came from, for a message: the flag, the model's key or its profile's."""
    if override:
        return "--revision"
    if "revision" not in view.settings:
        return "the default branch (set models.<name>.revision to choose one)".replace("<name>", view.name)
    key = f"models.{view.name}.revision" if view.spec.revision else f"profiles.{view.profile}.revision"
    return f"{key} ({view.sources['revision']})"


def _pull_one(loaded: LoadedConfig, hub: HubSettings, view: ModelView, override: str | None,
              progress: PullProgress) -> ModelPull:
    source = view.engine_source
    if view.remote:
        return ModelPull(view.name, source, status="remote",
                         note="served elsewhere (upstream): nothing to download here")
    if _is_local_dir(view):
        present = Path(source).is_dir()
        return ModelPull(view.name, source, status="local" if present else "failed",
                         note="a local directory: nothing to download" if present else None,
                         error=None if present else f"{view.name}: source directory {source} does not exist",
                         hint=None if present else f"fix models.{view.name}.source or copy the model there")
    pull = ModelPull(view.name, source, revision=override or model_revision(view))
    started = time.monotonic()
    try:
        if hub.modelscope:
            raise AnimllmError(f"VLLM_USE_MODELSCOPE is set: the engine downloads {source} from ModelScope, "
                               "which animllm pull does not fetch from",
                               hint="unset VLLM_USE_MODELSCOPE to use the Hugging Face hub")
        if hub.offline:
            _from_cache_only(hub, pull)
        else:
            _download(hub, pull, progress, _revision_key(view, override))
    except AnimllmError as exc:
        pull.status, pull.error, pull.hint = "failed", exc.message, exc.hint
    pull.seconds = round(time.monotonic() - started, 3)
    return pull


def _from_cache_only(hub: HubSettings, pull: ModelPull) -> None:
    snapshot = complete_snapshot(hub, pull.source, pull.revision)
    if snapshot is None:
        raise AnimllmError(f"{pull.source} (revision {pull.revision}) is not in the Hugging Face cache "
                           f"{hub.cache_dir}, and offline mode is on ({hub.offline_from}): nothing can be downloaded",
                           hint="unset HF_HUB_OFFLINE (or set it to 0) to download it")
    pull.commit, pull.snapshot = snapshot.name, str(snapshot)
    pull.files = [PulledFile(str(p.relative_to(snapshot)), p.stat().st_size)
                  for p in sorted(snapshot.rglob("*")) if p.is_file()]
    pull.total_bytes = sum(f.size or 0 for f in pull.files)
    pull.note = "offline: found in the cache, not checked against the hub"


def wanted_files(siblings: list[tuple[str, int | None]]) -> tuple[list[tuple[str, int | None]], list[str]]:
    """(what the engine reads, what it never reads): no other formats' weights, and no
    `.bin` weights where safetensors exist (vLLM then loads only those)."""
    has_safetensors = any(path.endswith(".safetensors") for path, _ in siblings)

    def unread(path: str) -> bool:
        pickled = has_safetensors and path.endswith((".bin", ".bin.index.json"))
        return pickled or any(fnmatch.fnmatch(path, pattern) for pattern in SKIPPED)

    return [(p, size) for p, size in siblings if not unread(p)], [p for p, _ in siblings if unread(p)]


def indexed_only(files: list[tuple[str, int | None]], index: Path) -> tuple[list[tuple[str, int | None]], list[str]]:
    """Without the top-level safetensors the index does not name: vLLM loads only those it
    names, and some repos carry the same weights twice (Mistral's consolidated.safetensors)."""
    try:
        named = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return files, []  # an index we cannot read: take everything, as the engine would find it

    def unused(path: str) -> bool:
        return path.endswith(".safetensors") and "/" not in path and path not in named

    return [(p, size) for p, size in files if not unused(p)], [p for p, _ in files if unused(p)]


def _download(hub: HubSettings, pull: ModelPull, progress: PullProgress, revision_key: str) -> None:
    from animllm_cli.pull.transfer import fetch_file, inside, write_ref

    with _hub_errors(hub, pull, revision_key):
        from huggingface_hub import HfApi

        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # the library's own tqdm bars: ours are drawn instead
        info = HfApi(endpoint=hub.endpoint).model_info(pull.source, revision=pull.revision, files_metadata=True,
                                                       token=hub.token_arg)
        commit = info.sha
        if not COMMIT_HASH.match(commit or ""):  # it names a folder in the cache
            raise AnimllmError(f"{hub.endpoint} gave {pull.source} the commit {str(commit)[:80]!r}, "
                               "not a 40-character hash; refused as a cache path")
        keep, pull.skipped_files = wanted_files([(s.rfilename, s.size) for s in info.siblings or []])
        snapshot = hub.repo_dir(pull.source) / "snapshots" / commit
        pull.commit, pull.snapshot = commit, str(snapshot)
        for path, _ in keep:  # names from the server become paths: every one checked before anything is fetched
            inside(snapshot, path)
        index_fetched = 0
        if any(path == SAFETENSORS_INDEX for path, _ in keep):  # small, and it says which weights vLLM loads
            index_fetched = fetch_file(hub, pull.source, commit, SAFETENSORS_INDEX,
                                       on_start=lambda size, resume_from: None, on_position=lambda n: None)
            keep, unindexed = indexed_only(keep, snapshot / SAFETENSORS_INDEX)
            pull.skipped_files += unindexed
        pull.files = [PulledFile(path, size, "downloaded" if path == SAFETENSORS_INDEX and index_fetched else "present")
                      for path, size in keep]
        pull.downloaded_bytes += index_fetched
        pull.total_bytes = sum(f.size or 0 for f in pull.files)
        missing = [f for f in pull.files if not (snapshot / f.path).is_file()]
        progress.model_started(pull, missing)
        for file in missing:
            def started(size: int | None, resume_from: int, file: PulledFile = file) -> None:
                file.size = size if size is not None else file.size
                file.resumed_from = resume_from or None
                progress.file_started(pull.model, file, resume_from)

            pull.downloaded_bytes += fetch_file(
                hub, pull.source, commit, file.path, on_start=started,
                on_position=lambda on_disk, file=file: progress.file_position(pull.model, file, on_disk))
            file.status = "downloaded"
            progress.file_finished(pull.model, file)
        write_ref(hub, pull.source, pull.revision, commit)
        pull.status = "downloaded" if missing or index_fetched else "present"


class _hub_errors:
    """huggingface_hub's exceptions (and the HTTP clients' under them) as messages that
    name the repo, the endpoint, the revision's config key or the token's variable."""

    def __init__(self, hub: HubSettings, pull: ModelPull, revision_key: str) -> None:
        self.hub, self.pull, self.revision_key = hub, pull, revision_key

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, AnimllmError):
            return False
        translated = _translate(exc, self.hub, self.pull, self.revision_key)
        if translated is None:
            return False
        raise translated from exc


def _translate(exc: Exception, hub: HubSettings, pull: ModelPull, revision_key: str) -> AnimllmError | None:
    from huggingface_hub.utils import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError,
                                       OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)

    repo, where = pull.source, hub.endpoint
    if isinstance(exc, HFValidationError):  # before any request: the name itself
        return AnimllmError(f"models.{pull.model}.source {repo!r} is not a Hugging Face repo id: "
                            f"{str(exc).splitlines()[0]}", hint="write it as org/name, or give a local directory")
    if isinstance(exc, OfflineModeIsEnabled):  # the shell's HF_HUB_OFFLINE, read by the library at import
        return AnimllmError(f"huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it loaded): "
                            f"{repo} cannot be downloaded", hint="unset HF_HUB_OFFLINE in the shell to pull")
    no_token = "no Hugging Face token is set: export HF_TOKEN=hf_... (or run `hf auth login`)"
    if isinstance(exc, GatedRepoError):  # a subclass of RepositoryNotFoundError: first
        if hub.token is None:
            return AnimllmError(f"{repo} is gated at {where}: downloading it needs a token with access",
                                hint=no_token)
        return AnimllmError(f"{repo} is gated at {where} and the token from {hub.token_from} has no access to it",
                            hint=f"request access on the model's page at {where}/{repo}, then pull again")
    if isinstance(exc, RevisionNotFoundError):
        return AnimllmError(f"revision '{pull.revision}' of {repo} not found at {where} (from {revision_key})",
                            hint="name an existing branch, tag or commit there")
    if isinstance(exc, RepositoryNotFoundError):
        return AnimllmError(f"repository {repo} not found at {where}",
                            hint=f"check models.{pull.model}.source; a private or gated repo also needs a token: "
                                 + (no_token if hub.token is None else f"the one from {hub.token_from} was refused"))
    if isinstance(exc, EntryNotFoundError):
        return AnimllmError(f"a file of {repo} listed at {where} could not be fetched: {exc}")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "an error")
        return AnimllmError(f"{where} answered {status} for {repo}: {str(exc).splitlines()[0]}")
    if _is_transport_error(exc):
        return AnimllmError(f"cannot reach the Hugging Face hub at {where}: {exc}",
                            hint="check the network (or HF_ENDPOINT); with the model already cached, "
                                 "HF_HUB_OFFLINE=1 uses the cache only")
    if type(exc).__name__ == "FileMetadataError":  # by name: its module moved between versions
        return AnimllmError(f"{where} answered for a file of {repo} without the headers a hub sends "
                            f"(ETag, X-Repo-Commit): {str(exc).splitlines()[0]}",
                            hint="HF_ENDPOINT must be the Hugging Face hub or a mirror of it")
    if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError)):
        return AnimllmError(f"writing {repo} into {hub.cache_dir}: {exc.strerror or exc}")
    return None


def _is_transport_error(exc: Exception) -> bool:
    """A connection refused, reset or timed out, in whichever HTTP client this
    huggingface_hub uses (requests before 1.0, httpx after)."""
    return any(cls.__module__.split(".")[0] in ("requests", "urllib3", "httpx", "httpx2", "httpcore")
               for cls in type(exc).__mro__)

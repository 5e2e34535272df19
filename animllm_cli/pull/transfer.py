"""One file from the hub into the cache, resumable across runs.

huggingface_hub's own `hf_hub_download` resumes only within one call: since 2.x it writes
to a process-unique temporary file and deletes it when the download fails or is
interrupted. So the transfer is done here with the library's pieces (the URL, the HEAD
that gives the blob's etag, size and commit, and `http_get`, which sends
`Range: bytes=N-` for what is already on disk), into `blobs/<etag>.incomplete`, the name
huggingface_hub 0.23-1.x keeps for its own partial files. Ctrl-C leaves it in place; the
next pull appends to it. The finished blob is linked into `snapshots/<commit>/` exactly as
huggingface_hub lays the cache out, so the engine finds it offline too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO, Callable

from animllm_cli.pull.hub import HubSettings


class _ReportingFile:
    """The partial file as `http_get` sees it: every write reports the bytes on disk."""

    def __init__(self, handle: BinaryIO, on_position: Callable[[int], None]) -> None:
        self._handle = handle
        self._on_position = on_position
        self.name = handle.name

    def write(self, data: bytes) -> int:
        written = self._handle.write(data)
        self._on_position(self._handle.tell())
        return written

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        result = self._handle.truncate(size)
        self._on_position(self._handle.tell())
        return result

    def flush(self) -> None:
        self._handle.flush()


def fetch_file(hub: HubSettings, repo: str, commit: str, filename: str, *,
               on_start: Callable[[int | None, int], None], on_position: Callable[[int], None]) -> int:
    """Download `filename` at `commit` unless its blob is cached; link it into the snapshot.
    `on_start(size, resume_from)` once the size is known, `on_position(bytes)` as data
    arrives. Returns the bytes this call transferred."""
    from filelock import FileLock
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo, filename, revision=commit, endpoint=hub.endpoint)
    metadata = get_hf_file_metadata(url, token=hub.token_arg)
    blob = hub.repo_dir(repo) / "blobs" / metadata.etag
    transferred = 0
    if not blob.is_file():
        blob.parent.mkdir(parents=True, exist_ok=True)
        hub.locks_dir(repo).mkdir(parents=True, exist_ok=True)
        # The lock huggingface_hub takes for the same blob: a vLLM downloading it now waits, or we do.
        with FileLock(str(hub.locks_dir(repo) / f"{metadata.etag}.lock")):
            if not blob.is_file():
                partial = blob.with_name(f"{metadata.etag}.incomplete")
                with partial.open("ab") as handle:
                    resume_from = handle.tell()
                    on_start(metadata.size, resume_from)
                    http_get(metadata.location, _ReportingFile(handle, on_position), resume_size=resume_from,
                             headers=build_hf_headers(token=hub.token_arg), expected_size=metadata.size)
                    transferred = handle.tell() - resume_from
                os.replace(partial, blob)
    _link(blob, hub.repo_dir(repo) / "snapshots" / commit / filename)
    return transferred


def _link(blob: Path, pointer: Path) -> None:
    """snapshots/<commit>/<file> -> ../../blobs/<etag>, relative as huggingface_hub makes it."""
    if pointer.is_file():
        return
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink():  # a dangling link from an earlier, deleted blob
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:  # a filesystem without symlinks: huggingface_hub copies too
        shutil.copyfile(blob, pointer)


def write_ref(hub: HubSettings, repo: str, revision: str, commit: str) -> None:
    """refs/<revision> names the commit, so the engine resolves the branch or tag offline."""
    if revision == commit:
        return
    ref = hub.repo_dir(repo) / "refs" / revision
    if ref.is_file() and ref.read_text().strip() == commit:
        return
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)

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

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator
from urllib.parse import urlsplit

from animllm_cli.errors import AnimllmError
from animllm_cli.pull.hub import HubSettings

SAFE_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,199}")  # a hash, as the hub sends: no separators, no '..'


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

    pointer = inside(hub.repo_dir(repo) / "snapshots" / commit, filename)
    url = hf_hub_url(repo, filename, revision=commit, endpoint=hub.endpoint)
    metadata = get_hf_file_metadata(url, token=hub.token_arg)
    blob = hub.repo_dir(repo) / "blobs" / _checked_etag(metadata.etag, url)
    transferred = 0
    if not blob.is_file():
        blob.parent.mkdir(parents=True, exist_ok=True)
        hub.locks_dir(repo).mkdir(parents=True, exist_ok=True)
        # The lock huggingface_hub takes for the same blob: a vLLM downloading it now waits, or we do.
        with FileLock(str(hub.locks_dir(repo) / f"{blob.name}.lock")):
            if not blob.is_file():
                transferred = _transfer(hub, url, metadata, blob.with_name(f"{blob.name}.incomplete"),
                                        on_start, on_position)
                os.replace(blob.with_name(f"{blob.name}.incomplete"), blob)
    _link(blob, pointer)
    return transferred


def _transfer(hub: HubSettings, url: str, metadata: Any, partial: Path,
              on_start: Callable[[int | None, int], None], on_position: Callable[[int], None]) -> int:
    """Into `partial`, from where an earlier pull stopped. A partial that cannot be the
    start of this file (longer than it) starts over; one already whole is not fetched."""
    from huggingface_hub.file_download import http_get

    size = metadata.size
    if partial.is_file() and size is not None and partial.stat().st_size > size:
        partial.unlink()
    with partial.open("ab") as handle:
        resume_from = handle.tell()
        on_start(size, resume_from)
        if size is not None and resume_from == size:
            return 0
        try:
            with _plain_http():
                http_get(metadata.location, _ReportingFile(handle, on_position), resume_size=resume_from,
                         headers=_headers_for(hub, url, metadata.location), expected_size=size)
        except OSError as exc:
            if "consistency" not in str(exc).lower():
                raise
            handle.close()
            partial.unlink(missing_ok=True)  # a body that is not this file: the next pull starts afresh
            raise AnimllmError(f"{url}: the bytes received do not make the file the hub described ({exc}); "
                               "the partial file was removed", hint="pull again") from None
        return handle.tell() - resume_from


def _headers_for(hub: HubSettings, url: str, location: str) -> dict[str, str]:
    """The hub's headers; the token only to the hub's own host, never to the CDN or bucket
    a file redirects to (as huggingface_hub itself does)."""
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=hub.token_arg)
    if urlsplit(location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)
        headers.pop("Authorization", None)
    return headers


@contextlib.contextmanager
def _plain_http() -> Iterator[None]:
    """huggingface_hub < 1.0 hands a fresh download to hf_transfer when
    HF_HUB_ENABLE_HF_TRANSFER is set; its partial files cannot be resumed and it reports no
    progress, so every transfer here is plain HTTP. (1.0 dropped hf_transfer.)"""
    from huggingface_hub import constants, file_download

    modules = [m for m in (constants, file_download) if getattr(m, "HF_HUB_ENABLE_HF_TRANSFER", False)]
    for module in modules:
        module.HF_HUB_ENABLE_HF_TRANSFER = False
    try:
        yield
    finally:
        for module in modules:
            module.HF_HUB_ENABLE_HF_TRANSFER = True


def _checked_etag(etag: str | None, url: str) -> str:
    """The blob's name in the cache: what the server says, so it must be a plain name."""
    if not etag:
        raise AnimllmError(f"{url}: the server gave no ETag, which names the file in the cache",
                           hint="HF_ENDPOINT must be the Hugging Face hub or a mirror that sends ETag headers")
    if not SAFE_NAME.fullmatch(etag):
        raise AnimllmError(f"{url}: the server's ETag {etag[:80]!r} is not a plain name; refused as a cache path")
    return etag


def inside(snapshot: Path, filename: str) -> Path:
    """`snapshot/filename`, refused when a name from the server would point outside it."""
    pointer = snapshot / filename
    if Path(filename).is_absolute() or not os.path.normpath(pointer).startswith(os.path.normpath(snapshot) + os.sep):
        raise AnimllmError(f"the hub listed a file named {filename[:120]!r}, which would be written outside "
                           f"{snapshot}; refused")
    return pointer


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

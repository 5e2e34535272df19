"""The keys `animllm keys create` makes for a configured client: a random key, printed
once, of which only its SHA-256 is kept (a key is 256 random bits: a fast hash is as safe
as a slow one, and lets the gateway check a key on every request), in a private file
(0600) of the state directory, one JSON record a line. Revoking marks a record; the
gateway reads the file again when it changes, so a revoked key is refused at once."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from animllm_cli.errors import UsageError
from animllm_cli.paths import open_private, state_dir

KEY_PREFIX = "sk-animllm-"


def keys_file() -> Path:
    return state_dir() / "clients" / "keys.jsonl"


def digest(key: str) -> str:
    """The SHA-256 of a key, as stored and as compared."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    id: str                    # shown by `keys list`, named by `keys revoke`: never the key
    client: str
    sha256: str
    created: float             # wall clock
    revoked: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "sha256"}


class KeyStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or keys_file()

    def records(self) -> list[KeyRecord]:
        """Every key made, revoked ones too; none when the file is missing."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [KeyRecord(**json.loads(line)) for line in lines if line.strip()]

    def create(self, client: str) -> tuple[KeyRecord, str]:
        """A new key for `client`: its record, and the key itself (shown once, kept nowhere)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(secrets.token_hex(4), client, digest(key), time.time())
        with self._locked(), open_private(self.path, "a") as out:
            out.write(json.dumps(asdict(record)) + "\n")
        return record, key

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (a revoke rewrites the file: a key made meanwhile would be lost)."""
        with open_private(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def revoke(self, wanted: str) -> list[KeyRecord]:
        """Revoke the key with id `wanted`, or every key of the client `wanted`. Returns
        what it revoked; a UsageError when nothing matches."""
        with self._locked():
            return self._revoke(wanted)

    def _revoke(self, wanted: str) -> list[KeyRecord]:
        records = self.records()
        hit = [r for r in records if r.revoked is None and wanted in (r.id, r.client)]
        if not hit:
            known = ", ".join(f"{r.id} ({r.client})" for r in records if r.revoked is None) or "none"
            raise UsageError(f"no key with id or client '{wanted}' to revoke", hint=f"live keys: {known}")
        now = time.time()
        kept = [KeyRecord(**{**asdict(r), "revoked": now}) if r in hit else r for r in records]
        partial = self.path.with_suffix(".partial")
        with open_private(partial, "w") as out:
            out.writelines(json.dumps(asdict(r)) + "\n" for r in kept)
        os.replace(partial, self.path)  # whole or not at all: a reader never sees half a file
        return hit

    def live(self) -> dict[str, str]:
        """sha256 -> client, of the keys not revoked."""
        return {r.sha256: r.client for r in self.records() if r.revoked is None}

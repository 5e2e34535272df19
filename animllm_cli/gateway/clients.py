"""The clients the gateway serves (`clients:` in the config), each with its own key: who a
request is from, what that client may do, and what it used.

- A key is known only by its SHA-256: from the variable a client's `api_key_env` names
  (read at start), or made by `animllm keys create` (access/keys.py, read again whenever
  that file changes, so a revoked key is refused at once). A presented key is hashed once
  and compared with every known hash in constant time (hmac.compare_digest, each of them:
  which one matched, or none, takes as long).
- The server's own key (`server.api_key_env`) is a client too, named "server": every model,
  the admin routes, as before clients existed. With no key at all, requests are the
  "anonymous" client's (loopback only, gateway/guard.py).
- Once any client is configured, every route but /health needs a key.
- Its priority: its `priority` where a request names none; a request's own may lower it but
  never raise it above `priority_max`.
- Its limits: `requests_per_minute` and `tokens_per_minute` (token buckets holding a
  minute's worth; a request that finds one empty is a 429 with Retry-After), its
  `concurrency` across all models and its `queue_share` (the scheduler's: Claimant).
- Its usage: per client and model, in /metrics (by name, never by key) and in the durable
  record `animllm usage` reads (access/usage.py), appended from a thread every second.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from animllm_cli.access.keys import KeyStore, digest
from animllm_cli.access.usage import UsageLog, UsageRow
from animllm_cli.config import LoadedConfig
from animllm_cli.config.schema import ClientSpec
from animllm_cli.gateway.scheduler import Claimant

log = logging.getLogger(__name__)
SERVER, ANONYMOUS = "server", "anonymous"
FLUSH_EVERY_S = 1.0


class Bucket:
    """A token bucket refilled at `per_minute`, holding at most a minute's worth."""

    def __init__(self, per_minute: float, clock: Callable[[], float]) -> None:
        # A minute's worth, and never less than one: a rate below one a minute still lets one through.
        self.rate_s, self.capacity, self.clock = per_minute / 60.0, max(1.0, float(per_minute)), clock
        self.level, self.at = self.capacity, clock()

    def _refill(self) -> None:
        now = self.clock()
        self.level, self.at = min(self.capacity, self.level + (now - self.at) * self.rate_s), now

    def wait_s(self, need: float) -> float:
        """Seconds until `need` is in the bucket (0: it is now)."""
        self._refill()
        return max(0.0, (need - self.level) / self.rate_s)

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount  # may go below zero: tokens are counted once the answer is known


@dataclass
class Client:
    """One client as the gateway enforces it."""
    name: str
    spec: ClientSpec | None            # None: the server's key, or anonymous (every model, admin)
    models: frozenset[str] | None      # the configured models it may use (None: all)
    claimant: Claimant
    requests: Bucket | None = None
    tokens: Bucket | None = None

    @property
    def admin(self) -> bool:
        return self.spec is None or self.spec.admin

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def priority(self, asked: float | None) -> float:
        """The request's priority: the client's own where it asks none, never above its ceiling."""
        if self.spec is None:
            return asked or 0.0
        if asked is None:
            return self.spec.priority
        ceiling = self.spec.priority_max if self.spec.priority_max is not None else self.spec.priority
        return min(asked, ceiling)

    def limited_s(self) -> float:
        """Seconds before a request of its may start (0: now): its request rate, its token rate."""
        waits = [self.requests.wait_s(1.0) if self.requests else 0.0, self.tokens.wait_s(0.0) if self.tokens else 0.0]
        return max(waits)


def _client(loaded: LoadedConfig, name: str, spec: ClientSpec, queue_max: int, clock: Callable[[], float]) -> Client:
    catalogue = loaded.catalogue
    allowed = None
    if spec.models:
        allowed = frozenset(m for wanted in spec.models
                            for m in ([catalogue.find(wanted)] + [n for n, s in loaded.config.models.items()
                                                                  if wanted in s.tasks]) if m)
    limit = max(1, int(spec.queue_share * queue_max)) if spec.queue_share else None
    return Client(name, spec, allowed, Claimant(name, spec.weight, spec.concurrency, limit),
                  Bucket(spec.requests_per_minute, clock) if spec.requests_per_minute else None,
                  Bucket(spec.tokens_per_minute, clock) if spec.tokens_per_minute else None)


@dataclass
class Clients:
    """Every client, by the hashes of its keys."""
    loaded: LoadedConfig
    server_key: str | None
    store: KeyStore = field(default_factory=KeyStore)
    usage_log: UsageLog | None = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        config = self.loaded.config
        self.by_name = {name: _client(self.loaded, name, spec, config.limits.queue_max, self.clock)
                        for name, spec in config.clients.items()}
        everything = Client(SERVER, None, None, Claimant(SERVER))
        self.anonymous = Client(ANONYMOUS, None, None, Claimant(ANONYMOUS))
        self._from_env: dict[str, Client] = {}
        if self.server_key:
            self._from_env[digest(self.server_key)] = everything
        for name, spec in config.clients.items():
            key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
            if key:
                self._from_env[digest(key)] = self.by_name[name]
        self._stored: dict[str, Client] = {}
        self._stored_stamp: tuple[float, int] | None = None
        self.pending: list[UsageRow] = []
        if self.configured and self.usage_log is None:
            self.usage_log = UsageLog()

    @property
    def configured(self) -> bool:
        """Clients are named: every route but /health needs one's key."""
        return bool(self.by_name)

    @property
    def required(self) -> bool:
        """A key is needed (a client's, or the server's)."""
        return self.configured or self.server_key is not None

    def identify(self, presented: str) -> Client | None:
        """The client whose key was presented, or None. Every known hash is compared, each in
        constant time, whichever matches."""
        if not presented:
            return None
        wanted = digest(presented).encode()
        found = None
        for known, client in [*self._from_env.items(), *self._stored_keys().items()]:
            if hmac.compare_digest(wanted, known.encode()):
                found = client
        return found

    def _stored_keys(self) -> dict[str, Client]:
        """The keys `animllm keys create` made, read again when their file changed."""
        if not self.by_name:  # no clients: keys made for them would name none
            return {}
        try:
            info = self.store.path.stat()
            stamp = (info.st_mtime, info.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stored_stamp:
            self._stored_stamp = stamp
            try:
                live = self.store.live() if stamp else {}
            except (OSError, ValueError, TypeError):  # unreadable: the keys known before stay
                log.warning("could not read the clients' keys in %s; keeping the ones read before", self.store.path)
                return self._stored
            self._stored = {digest: self.by_name[name] for digest, name in live.items() if name in self.by_name}
        return self._stored

    # ------------------------------------------------------------------ usage
    def record(self, client: Client, model: str, outcome: str, tokens_in: int, tokens_out: int,
               waited_s: float) -> None:
        """One request's usage: its token bucket charged, the durable record to be appended."""
        if client.tokens is not None:
            client.tokens.take(tokens_in + tokens_out)
        if self.usage_log is not None:
            self.pending.append(UsageRow(time.time(), client.name, model, outcome, tokens_in, tokens_out, waited_s))

    async def keep_records(self) -> None:
        """Append what was used every FLUSH_EVERY_S, from a thread (SQLite blocks)."""
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            await self.flush()

    async def flush(self) -> None:
        rows, self.pending = self.pending, []
        if rows and self.usage_log is not None:
            try:
                await asyncio.to_thread(self.usage_log.append, rows)
            except Exception:  # noqa: BLE001 - a full disk must not take the gateway down
                log.exception("could not record the usage of %d requests in %s", len(rows), self.usage_log.path)
                self.pending = rows + self.pending


"""Models served elsewhere (`upstream:` in the config): OpenAI-compatible servers on other
machines, behind the same gateway. animllm never loads or evicts them; it relays to them
as to its own engines (gateway/relay.py), spreads requests over a model's URLs (the least
outstanding requests, ties in turn), takes a URL that fails out of rotation and
brings it back when its health check passes again.

Health: GET <url>/v1/models with the key every `health_interval_s` (client/upstream.probe,
the doctor's probe too). A URL is out after a failed check, or at once when a request to
it cannot connect or gets 502/503/504 or a redirect. While every URL of a model is out,
requests still try them all: a stale verdict must not refuse a server that came back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Mapping

from animllm_cli.client.upstream import MissingKey, auth_headers, http_client, probe_all, tls_setting, upstream_key
from animllm_cli.config import LoadedConfig
from animllm_cli.config.schema import UpstreamSpec
from animllm_cli.errors import ConfigError
from animllm_cli.wire import RemoteStatus, UpstreamStatus

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Upstream:
    """One URL of a remote model."""
    url: str
    outstanding: int = 0                 # requests sent to it and not yet answered in full
    sent: int = 0
    picked: int = 0                      # when it was last picked (a sequence number): ties go round robin
    healthy: bool | None = None          # None: not checked yet (tried like a healthy one)
    problem: str | None = None           # why it is out of rotation
    checked_at: float | None = None      # wall clock of the last health check

    def mark_failed(self, problem: str) -> None:
        self.healthy, self.problem = False, problem

    def status(self) -> UpstreamStatus:
        return UpstreamStatus(url=self.url, healthy=self.healthy, problem=self.problem,
                              outstanding=self.outstanding, sent=self.sent, checked_at=self.checked_at)


class RemoteModel:
    """A model the gateway relays to one of its upstream URLs."""

    def __init__(self, name: str, spec: UpstreamSpec, environ: Mapping[str, str] | None = None) -> None:
        self.name, self.spec = name, spec
        self.served_name = spec.model or name   # what the request's `model` becomes there
        self.upstreams = [Upstream(url) for url in spec.urls]
        self._picks = itertools.count(1)
        try:
            self.key, self.key_problem = upstream_key(spec, environ), None
        except MissingKey as exc:  # every request fails with this until the gateway restarts with it
            self.key, self.key_problem = None, str(exc)
            log.warning("'%s' cannot be served: %s", name, exc)
        try:
            self.tls: ssl.SSLContext | bool = tls_setting(spec)
        except OSError as exc:  # ssl.SSLError too: not PEM certificates
            raise ConfigError([f"models.{name}.upstream.ca_bundle: {spec.ca_bundle} cannot be read: "
                               f"{getattr(exc, 'strerror', None) or exc}"],
                              hint=f"point models.{name}.upstream.ca_bundle at a readable PEM file of CA "
                                   f"certificates (`animllm doctor --only upstreams` checks it)") from None
        self.headers = auth_headers(self.key)

    def pick(self, tried: set[Upstream]) -> Upstream | None:
        """The URL for the next try: healthy (or unchecked) ones first, least outstanding,
        then the one picked longest ago; None when every URL has been tried."""
        left = [u for u in self.upstreams if u not in tried]
        usable = [u for u in left if u.healthy is not False] or left
        if not usable:
            return None
        chosen = min(usable, key=lambda u: (u.outstanding, u.picked))
        chosen.picked = next(self._picks)
        return chosen

    def candidates(self) -> Iterator[Upstream]:
        """Each URL once, picked as the request goes (a failover takes the next best)."""
        tried: set[Upstream] = set()
        while (upstream := self.pick(tried)) is not None:
            tried.add(upstream)
            yield upstream

    def status(self, *, running: int, waiting: int) -> RemoteStatus:
        return RemoteStatus(model=self.name, served_name=self.served_name, key_env=self.spec.api_key_env,
                            key_problem=self.key_problem, in_flight=running, waiting=waiting,
                            upstreams=[u.status() for u in self.upstreams])

    async def check(self, client: httpx.AsyncClient) -> None:
        """Probe every URL at once and record the verdicts."""
        if self.key_problem:
            for upstream in self.upstreams:
                upstream.mark_failed(self.key_problem)
            return
        probes = await probe_all(client, self.spec, self.served_name, self.key)  # in the order of self.upstreams
        for upstream, result in zip(self.upstreams, probes):
            if result.ok != upstream.healthy and (upstream.healthy is not None or not result.ok):
                log.warning("upstream %s of '%s' is %s", upstream.url, self.name,
                            "back in rotation" if result.ok else f"out of rotation: {result.problem}")
            upstream.healthy, upstream.problem, upstream.checked_at = result.ok, result.problem, time.time()


class Upstreams:
    """Every remote model of the config, and their health checks."""

    def __init__(self, loaded: LoadedConfig, environ: Mapping[str, str] | None = None) -> None:
        self.models = {name: RemoteModel(name, loaded.config.models[name].upstream, environ)  # type: ignore[arg-type]
                       for name in loaded.remote_model_names()}

    def __contains__(self, model: object) -> bool:
        return model in self.models

    def get(self, model: str) -> RemoteModel | None:
        return self.models.get(model)

    async def watch(self) -> None:
        """Check each remote model's URLs now, then every its `health_interval_s`, until cancelled."""
        await asyncio.gather(*(self._watch(remote) for remote in self.models.values()))

    async def _watch(self, remote: RemoteModel) -> None:
        async with http_client(remote.tls) as client:
            while True:
                try:
                    await remote.check(client)
                except Exception:  # noqa: BLE001 - a probe must never end the checks
                    log.exception("health check of '%s' failed", remote.name)
                await asyncio.sleep(remote.spec.health_interval_s)

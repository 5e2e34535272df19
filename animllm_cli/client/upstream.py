"""What animllm needs to talk to a remote OpenAI-compatible server (a model's `upstream`):
its key, its TLS setting, and the one probe that says whether it can serve the model.
The gateway's health checks and `doctor` use the same probe, so they agree.

Keys go to the server's own URLs only: nothing here follows a redirect (a key must never
reach another host), and no key is ever part of a message.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

import httpx

from animllm_cli.config.schema import UpstreamSpec

MODELS_PATH = "/v1/models"


class MissingKey(Exception):
    """The variable that should hold the upstream's key is not set."""


def upstream_key(spec: UpstreamSpec, environ: Mapping[str, str] | None = None) -> str | None:
    """The key from the variable `api_key_env` names; None when the upstream needs none.
    MissingKey (naming the variable) when it is named but empty."""
    if not spec.api_key_env:
        return None
    key = (os.environ if environ is None else environ).get(spec.api_key_env, "")
    if not key:
        raise MissingKey(f"the variable {spec.api_key_env} (upstream.api_key_env) is not set: export the "
                         f"server's key in it")
    return key


def auth_headers(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def tls_setting(spec: UpstreamSpec) -> ssl.SSLContext | bool:
    """What the upstream's certificate is checked against: the system's CAs, the config's
    `ca_bundle`, or nothing (`verify_tls: false`). Raises OSError/ssl.SSLError for a
    bundle that cannot be read."""
    if not spec.verify_tls:
        return False
    return ssl.create_default_context(cafile=spec.ca_bundle) if spec.ca_bundle else ssl.create_default_context()


def http_client(tls: ssl.SSLContext | bool) -> httpx.AsyncClient:
    """The client of the health checks and the doctor's probe: like the relay, it follows
    no redirect and takes no proxy from the environment."""
    return httpx.AsyncClient(verify=tls, follow_redirects=False, trust_env=False)


def sends_key_in_clear(spec: UpstreamSpec, url: str) -> bool:
    """A key to a plain-http URL off this machine travels readable by anyone on the path."""
    parts = urlsplit(url)
    return bool(spec.api_key_env) and parts.scheme == "http" and not _loopback(parts.hostname or "")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass
class Probe:
    """One look at an upstream URL: can it serve the model with this key?"""
    url: str
    ok: bool
    problem: str | None = None        # why not, in words (never the key)
    served: list[str] = field(default_factory=list)  # what its /v1/models lists
    seconds: float = 0.0


def judge(url: str, served_name: str, status: int, body: bytes, location: str | None, keyed: bool) -> Probe:
    """The verdict on a /v1/models answer."""
    if 300 <= status < 400:
        return Probe(url, False, f"redirects (HTTP {status}) to {location or 'nowhere'}; animllm never follows a "
                                 f"redirect (a key must not reach another host): configure the URL it redirects to")
    if status in (401, 403, 407):
        return Probe(url, False, f"refused the key (HTTP {status})" if keyed else
                                 f"asks for a key (HTTP {status}): set upstream.api_key_env")
    if status != 200:
        return Probe(url, False, f"answered HTTP {status} to GET {MODELS_PATH}")
    try:
        listed = [m for m in json.loads(body).get("data", []) if isinstance(m, dict)]
    except (ValueError, AttributeError, TypeError):
        return Probe(url, False, f"GET {MODELS_PATH} is not an OpenAI model list")
    served = [str(m.get("id")) for m in listed]
    # Another animllm gateway also answers to each model's aliases, which it lists.
    answers_to = served + [a for m in listed if isinstance(m.get("aliases"), list) for a in m["aliases"]]
    if served_name not in answers_to:
        return Probe(url, False, f"does not serve '{served_name}' (it serves: {', '.join(served) or 'nothing'}); "
                                 f"set upstream.model to its name there", served)
    return Probe(url, True, None, served)


async def probe(client: httpx.AsyncClient, url: str, served_name: str, key: str | None, timeout_s: float) -> Probe:
    """GET <url>/v1/models with the key, no redirect followed, within `timeout_s`."""
    started = time.monotonic()
    try:
        answer = await client.get(f"{url}{MODELS_PATH}", headers=auth_headers(key), timeout=timeout_s,
                                  follow_redirects=False)
    except httpx.TimeoutException:
        result = Probe(url, False, f"no answer within {timeout_s:g}s")
    except httpx.HTTPError as exc:
        result = Probe(url, False, f"unreachable: {_reason(exc)}")
    else:
        result = judge(url, served_name, answer.status_code, answer.content, answer.headers.get("location"),
                       key is not None)
    result.seconds = round(time.monotonic() - started, 3)
    return result


async def probe_all(client: httpx.AsyncClient, spec: UpstreamSpec, served_name: str, key: str | None) -> list[Probe]:
    """Every URL of the upstream at once, in the config's order."""
    return list(await asyncio.gather(*(probe(client, url, served_name, key, spec.health_timeout_s)
                                       for url in spec.urls)))


def _reason(exc: BaseException) -> str:
    """The innermost cause, e.g. 'Connection refused' or a certificate error."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(exc) or type(exc).__name__

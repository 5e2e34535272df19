"""Who may talk to the gateway, and what it reads from them.

- Without an API key (only allowed on a loopback bind) the Host header must name a
  loopback host: a DNS-rebinding page cannot reach it under another name.
- With a key (the server's, or once `clients:` names any, a client's: gateway/clients.py),
  every route but /health needs one (admin routes too); the client it names is the
  request's (`request.state.client`).
- A browser's cross-site request (an `Origin` that is not a loopback origin) is refused
  unless it carries the key: a web page cannot drive the gateway behind the user's back.
- POST bodies must be JSON (`Content-Type: application/json`), which a cross-site "simple"
  request cannot send, and at most `limits.max_body_bytes` long (413 before reading more).
  The audio routes take multipart forms, which a page can post without asking: there a
  browser always sends its `Origin`, and any but the gateway's own is refused without the
  key (a page another local server serves is another origin too). Ollama's routes take
  JSON under any such type (`curl -d` labels it a form), held to the same rule.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from animllm_cli.bind import LOOPBACK
from animllm_cli.gateway.clients import Client, Clients
from animllm_cli.gateway.dialects import GatewayError

def error(status: int, message: str, kind: str = "invalid_request_error", *, param: str | None = None,
          code: str | None = None, retry_after: float | None = None) -> GatewayError:
    """OpenAI's error envelope (the route reshapes it for another API: gateway/dialects.py)."""
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return GatewayError(status, message, kind, param, code, headers)


class Refused(Exception):
    """A request the guard turns away; carries the response and the metric label."""

    def __init__(self, response: Response, label: str) -> None:
        super().__init__(label)
        self.response, self.label = response, label


@functools.lru_cache(maxsize=256)  # clients send the same few Host headers; urlsplit is most of a request's check
def _host(value: str) -> str:
    return (urlsplit(f"//{value}").hostname or "").lower()


@functools.lru_cache(maxsize=256)
def loopback_origin(origin: str) -> bool:
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and (parts.hostname or "").lower() in LOOPBACK


def _presented_key(request: Request) -> str:
    """The key a client sent: `Authorization: Bearer` (OpenAI's SDK), else `x-api-key`
    (Anthropic's)."""
    bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    return bearer or request.headers.get("x-api-key", "").strip()


JSON_ONLY = ("application/json",)
# What a web page may send cross-site without a preflight (the CORS "simple" requests).
SIMPLE_MEDIA = frozenset({"multipart/form-data", "application/x-www-form-urlencoded", "text/plain", ""})


def path_of(request: Request) -> str:
    """`request.url.path` without building the URL for it (Starlette parses the whole URL):
    the path as that URL spells it, '?', '#' and '\\' escaped (urlsplit there would also
    drop tabs and line breaks, which no route's path holds)."""
    return request.scope["path"].replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def check(request: Request, clients: Clients, media: tuple[str, ...] = JSON_ONLY) -> Client:
    """The client the request is from, or Refused unless it may go on (headers only; the
    body is read later). `media`: the content types the route's POST bodies may have."""
    client = clients.identify(_presented_key(request)) if clients.required else None
    keyed = client is not None
    if not clients.required and _host(request.headers.get("host", "")) not in LOOPBACK:
        raise Refused(error(403, "non-local Host header refused (no API key is set)", "permission_error"), "host")
    origin = request.headers.get("origin")
    if origin is not None and not loopback_origin(origin) and not keyed:
        raise Refused(error(403, f"cross-site request from {origin} refused", "permission_error"), "origin")
    # A body a page may post without asking first (a form, none at all) from another page on
    # this machine (another port: another origin) would not be stopped by a preflight.
    given = request.headers.get("content-type", "").split(";")[0].strip().lower()
    simple = given in SIMPLE_MEDIA and given in media  # a GET too: it has no body, so no content type
    if origin is not None and not keyed and simple and origin != _own_origin(request):
        raise Refused(error(403, f"a form from {origin} refused: only the gateway's own pages, or a request with "
                                 f"the key, may post one", "permission_error"), "origin")
    if clients.required and not keyed:
        raise Refused(error(401, "missing or wrong API key (Authorization: Bearer ..., or x-api-key)",
                            "authentication_error"), "auth")
    if request.method == "POST" and given not in media:
        raise Refused(error(415, f"POST bodies here must be {' or '.join(media)} "
                                 f"(got {given or 'no content type'})"), "content_type")
    return client or clients.anonymous


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:  # gone mid-upload: nobody to answer, nothing to log
        raise Refused(Response(status_code=499), "client_gone") from None
    return b"".join(chunks)


def _too_large(limit: int) -> Refused:
    return Refused(error(413, f"the request body is larger than the limit of {limit:,} bytes "
                              "(limits.max_body_bytes)"), "too_large")


def parse_object(raw: bytes) -> dict[str, Any]:
    """A JSON object, or Refused with a 400 that says what is wrong (never a 500)."""
    try:
        payload = json.loads(raw)
    except RecursionError:  # the C parser stops at the interpreter's recursion limit
        raise Refused(error(400, "the request body nests too deeply"), "bad_json") from None
    except ValueError as exc:
        raise Refused(error(400, f"the request body is not valid JSON ({str(exc)[:120]})"), "bad_json") from None
    if not isinstance(payload, dict):
        raise Refused(error(400, f"the request body must be a JSON object, not {type(payload).__name__}"), "bad_json")
    return payload

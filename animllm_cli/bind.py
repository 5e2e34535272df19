"""The bind rules: which hosts count as this machine, the key a wider bind needs, and
whether a port can be listened on now. A leaf: `serve`, the doctor and the gateway's guard
read it without loading the server stack."""

from __future__ import annotations

import os
import socket

from animllm_cli.config import LoadedConfig
from animllm_cli.errors import UsageError

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def api_key(loaded: LoadedConfig) -> str | None:
    """The key comes from the environment variable the config names, never from argv."""
    return os.environ.get(loaded.config.server.api_key_env) or None


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def bind_error(host: str, port: int) -> str | None:
    """Why the gateway could not listen on host:port right now, or None if it could."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def check_bind(host: str, key: str | None, key_env: str, *, clients: bool = False) -> None:
    """A bind beyond this machine needs a key: the server's, or (`clients`: the config names
    clients) each client's, which every request then needs."""
    if host not in LOOPBACK and not key and not clients:
        raise UsageError(f"refusing to bind {host} without an API key",
                         hint=f"export {key_env}=<a long random key> first, name clients (clients: in the "
                              f"config, `animllm keys create`), or bind 127.0.0.1")

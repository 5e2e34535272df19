"""The admin side of a running gateway, for `status`, `switch`, `stop` and `logs`."""

from __future__ import annotations

import os
from typing import Any

import httpx

from animllm_cli.errors import AnimllmError
from animllm_cli.gateway.server import GatewayState, read_state


class NotRunning(AnimllmError):
    def __init__(self) -> None:
        super().__init__("no gateway is running", hint="start one with `animllm serve` (or `animllm serve --detach`)")


class AdminClient:
    def __init__(self, state: GatewayState, key_env: str) -> None:
        self.state = state
        key = os.environ.get(key_env)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=state.url, headers=headers, timeout=httpx.Timeout(10.0, read=None))

    @classmethod
    def find(cls, key_env: str) -> "AdminClient":
        state = read_state()
        if state is None:
            raise NotRunning()
        return cls(state, key_env)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise AnimllmError(f"the gateway at {self.state.url} (pid {self.state.pid}) does not answer: {exc}",
                               hint="`animllm stop` ends it; its log is " + (self.state.log or "on its terminal")) from None
        data = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code >= 400:
            message = (data.get("error") or {}).get("message") or response.text
            raise AnimllmError(f"the gateway answered {response.status_code}: {message}")
        return data

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/admin/status")

    def switch(self, model: str) -> dict[str, Any]:
        return self._call("POST", "/admin/switch", json={"model": model})

    def stop(self) -> dict[str, Any]:
        return self._call("POST", "/admin/stop")

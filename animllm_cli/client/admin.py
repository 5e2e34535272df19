"""The admin side of a running gateway, for `status`, `switch`, `stop` and `logs`."""

from __future__ import annotations

import os
from typing import Any

import httpx

from animllm_cli.client.openai import server_message
from animllm_cli.credentials import bearer
from animllm_cli.errors import AnimllmError
from animllm_cli.runfile import GatewayState, read_state
from animllm_cli.wire import StatusReport, StopAnswer, SwitchReport, read


# /admin/stop answers at once and stops the engines after: a gateway that has not
# answered in this long is wedged (`stop` then signals it).
STOP_ANSWER_S = 10.0


class NotRunning(AnimllmError):
    def __init__(self) -> None:
        super().__init__("no gateway is running", hint="start one with `animllm serve` (or `animllm serve --detach`)")


class GatewayUnreachable(AnimllmError):
    """Nothing answers at the gateway's address (in time)."""

    def __init__(self, state: GatewayState, reason: str) -> None:
        super().__init__(f"the gateway at {state.url} (pid {state.pid}) does not answer: {reason}",
                         hint="`animllm stop` ends it; its log is " + (state.log or "on its terminal"))
        self.reason = reason


class GatewayRefused(AnimllmError):
    """The gateway answered with an HTTP error."""

    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        super().__init__(f"the gateway answered {status}: {message}", hint=hint)
        self.status = status


class AdminClient:
    def __init__(self, state: GatewayState, key_env: str, *, timeout: httpx.Timeout | float | None = None) -> None:
        """`timeout`: by default 10 s to connect and no bound on reading (a switch takes what
        a load takes); a view that refreshes (top) passes its own short bound."""
        self.state = state
        self.key_env = key_env
        self.http = httpx.Client(base_url=state.url, headers=bearer(os.environ.get(key_env)),
                                 timeout=timeout if timeout is not None else httpx.Timeout(10.0, read=None))

    @classmethod
    def find(cls, key_env: str) -> "AdminClient":
        state = read_state()
        if state is None:
            raise NotRunning()
        return cls(state, key_env)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, path, **kwargs)
        return response.json() if response.headers.get("content-type", "").startswith("application/json") else {}

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise GatewayUnreachable(self.state, str(exc)) from None
        if response.status_code >= 400:
            hint = (f"this gateway needs its API key: export {self.key_env}=<the key it was started with, or "
                    f"an admin client's> in this shell" if response.status_code == 401 else None)
            raise GatewayRefused(response.status_code, server_message(response), hint)
        return response

    def close(self) -> None:
        self.http.close()

    def _read(self, kind, data: dict[str, Any]):
        return read(kind, data, f"the gateway at {self.state.url}")

    def status(self) -> StatusReport:
        report = self._read(StatusReport, self._call("GET", "/admin/status"))
        report.url = self.state.url
        return report

    def metrics(self) -> str:
        """The gateway's /metrics: its own and its engines' (Prometheus text)."""
        return self._send("GET", "/metrics").text

    def switch(self, model: str) -> SwitchReport:
        return self._read(SwitchReport, self._call("POST", "/admin/switch", json={"model": model}))

    def unload(self, model: str, *, sleep: bool = False) -> SwitchReport:
        body = {"model": model, **({"sleep": True} if sleep else {})}
        return self._read(SwitchReport, self._call("POST", "/admin/unload", json=body))

    def stop(self) -> StopAnswer:
        """Ask it to stop; GatewayUnreachable when it does not answer within STOP_ANSWER_S."""
        return self._read(StopAnswer, self._call("POST", "/admin/stop", json={}, timeout=STOP_ANSWER_S))

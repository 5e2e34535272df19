"""The error shapes of the APIs the gateway speaks. A client's SDK raises its own typed
errors only on its API's shape: the `openai` SDK reads `{"error": {"message", "type", ...}}`,
the `anthropic` SDK `{"type": "error", "error": {"type", "message"}}`, and in a stream
an Anthropic client sees an error only as an `event: error` (it drops events without an
`event:` line, so an OpenAI-shaped error event would end its stream in silence). Ollama's
clients read `{"error": "..."}`, in a stream as its last NDJSON line.

The gateway makes its errors in OpenAI's shape (guard.error) wherever it finds them; the
route a request came in by reshapes them once, on the way out (app.guarded), and gives its
streams the error events of its dialect.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.responses import JSONResponse, Response

# Anthropic's error types by HTTP status (docs.anthropic.com, "Errors"); 503 is its
# overloaded_error (Anthropic itself answers that with 529, which no other client knows).
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 409: "invalid_request_error", 413: "request_too_large",
                   415: "invalid_request_error", 429: "rate_limit_error", 503: "overloaded_error",
                   504: "timeout_error"}


# What a stream's error event would have been answered with, had the stream not begun.
STREAM_ERROR_STATUS = {"timeout": 504, "server_busy": 503, "engine_unavailable": 503}


class GatewayError(JSONResponse):
    """An error the gateway made (not an engine's answer): OpenAI's envelope, with its parts
    kept for reshaping into another API's."""

    def __init__(self, status: int, message: str, kind: str, param: str | None, code: str | None,
                 headers: dict[str, str] | None) -> None:
        super().__init__({"error": {"message": message, "type": kind, "param": param, "code": code}},
                         status_code=status, headers=headers)
        self.message, self.kind, self.param, self.code = message, kind, param, code
        self.extra_headers = headers


@dataclass(frozen=True)
class Dialect:
    name: str  # openai | anthropic | ollama

    def reshape(self, response: Response) -> Response:
        """A gateway error in this API's shape; any other response as it is."""
        if self.name == "openai" or not isinstance(response, GatewayError):
            return response
        return JSONResponse(self.error_body(response.status_code, response.message, response.kind),
                            status_code=response.status_code, headers=response.extra_headers)

    def error_body(self, status: int, message: str, kind: str) -> dict:
        if self.name == "ollama":
            return {"error": message}
        if self.name == "anthropic":
            return {"type": "error", "error": {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
        return {"error": {"message": message, "type": kind}}

    def stream_error(self, message: str, kind: str) -> bytes:
        """An error event that ends a stream. A blank line first ends any event the engine
        left half-written."""
        body = json.dumps(self.error_body(STREAM_ERROR_STATUS.get(kind, 500), message, kind)).encode()
        event = b"event: error\n" if self.name == "anthropic" else b""
        return b"\n\n" + event + b"data: " + body + b"\n\n"


OPENAI = Dialect("openai")
ANTHROPIC = Dialect("anthropic")
OLLAMA = Dialect("ollama")  # its streams are NDJSON: gateway/ollama/answers.py makes their errors


def dialect_of(path: str) -> Dialect:
    """The API a path belongs to: Anthropic's Messages API, Ollama's, else OpenAI's (and vLLM's own)."""
    if path.startswith("/api/"):
        return OLLAMA
    return ANTHROPIC if path == "/v1/messages" or path.startswith("/v1/messages/") else OPENAI

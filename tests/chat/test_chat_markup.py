"""Rich markup that comes from outside (a model's answer, a model name the server echoes,
an error message, a file name) prints literally in `animllm chat`: never interpreted as
styles or links, never a MarkupError. Scripted through stdin against a small OpenAI-style
server that puts markup everywhere it can."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.helpers import run_cli

ANSWER = "[/] [bold]x[/bold] [link=http://evil.example]y[/link] \\"
ERROR = "no [/] such [bold]thing[/bold] [link=http://evil.example]click[/link]"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if body["messages"][-1]["content"] == "fail":
            data = json.dumps({"error": {"message": ERROR}}).encode()
            self.send_response(400)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        model = body["model"]  # echoed as servers do: the model field of every chunk
        for chunk in ({"model": model, "choices": [{"delta": {"content": ANSWER}}]},
                      {"model": model, "choices": [], "usage": {"completion_tokens": 1}}):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_markup_in_answers_names_errors_and_paths_prints_literally(server: str, tmp_path: Path) -> None:
    saved = tmp_path / "[bold]notes.md"
    script = "\n".join(["hello", "fail", "/model [red]n[/]", "again", f"/save {saved}", "/exit"]) + "\n"
    result = run_cli("chat", "m[/]", "-i", "--url", server, input=script)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{ANSWER}\n" * 2
    err = result.stderr
    assert "chatting with m[/];" in err
    assert "1 tokens" in err and " · m[/]" in err                  # the stats line names the served model
    assert f"error: the server answered 400: {ERROR}" in err
    assert "now talking to [red]n[/]" in err and " · [red]n[/]" in err
    assert f"saved to {saved}" in err and saved.exists()


def test_one_shot_stats_line_with_markup_in_the_model_name(server: str) -> None:
    result = run_cli("chat", "[/bold]m", "-p", "hi", "--url", server)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{ANSWER}\n" and " · [/bold]m" in result.stderr


def test_output_messages_escape_what_they_are_given(capsys: pytest.CaptureFixture) -> None:
    from animllm_cli.output import Output

    out = Output(verbose=1)
    out.warn("stopped [/] engine [bold]x[/bold]")
    out.debug("config file: /tmp/[/]a.yaml")
    with out.status("switching to [link=http://evil.example]m[/link]…"):
        pass
    out.error("bad [/]", hint="try [bold]this[/bold]")
    err = capsys.readouterr().err
    for text in ("warning: stopped [/] engine [bold]x[/bold]", "config file: /tmp/[/]a.yaml",
                 "switching to [link=http://evil.example]m[/link]…", "error: bad [/]", "hint: try [bold]this[/bold]"):
        assert text in err, err

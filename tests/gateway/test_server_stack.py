"""The gateway's event loop and HTTP parser (animllm_cli/server_stack.py): uvloop and
httptools, declared dependencies, named to uvicorn rather than left to its "auto"; asyncio
and h11 where they are missing; and `status` saying which a running gateway runs on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from animllm_cli import server_stack
from animllm_cli.config import load_config
from animllm_cli.gateway import server as gateway_server
from tests.fakes.nvml import FakeNvml
from tests.support.gateways import REMOTE_START_BOUND_S, fake_gateway_config, remote_fake_vllm, start_gateway
from tests.support.helpers import REPO_ROOT, free_port, run_cli, write
from tests.support.waiting import wait_until

UVLOOP, HTTPTOOLS = f"uvloop {version('uvloop')}", f"httptools {version('httptools')}"


def _built(tmp_path: Path):
    loaded = load_config(fake_gateway_config(tmp_path))
    return gateway_server.build(loaded, model="a", host="127.0.0.1", port=free_port(), key=None,
                                hooks=gateway_server.Hooks(), nvml_module=FakeNvml(missing=True),
                                log_dir=tmp_path / "logs", write_state_file=False, exit_on_failed_load=False)


def test_uvicorn_is_told_uvloop_and_httptools(tmp_path: Path) -> None:
    server, gateway = _built(tmp_path)
    assert (server.config.loop, server.config.http, gateway.http_parser) == ("uvloop", "httptools", "httptools")
    server.config.load()
    assert server.config.http_protocol_class.__module__ == "uvicorn.protocols.http.httptools_impl"


def test_without_them_the_gateway_runs_on_asyncio_and_h11(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_stack, "importable", lambda module: False)
    server, gateway = _built(tmp_path)
    assert (server.config.loop, server.config.http, gateway.http_parser) == ("asyncio", "h11", "h11")
    server.config.load()
    assert server.config.http_protocol_class.__module__ == "uvicorn.protocols.http.h11_impl"


def test_serve_runs_on_uvloop_and_httptools_and_status_says_so(tmp_path: Path) -> None:
    """`serve` itself (a model served elsewhere: no engine to wait for): the running loop is
    uvloop's, and `status` names both with their versions, with nothing to fix."""
    with remote_fake_vllm(tmp_path, served_name="far") as (url, _process):
        config = write(tmp_path / "remote.yaml", f"""
            inherit_defaults: false
            models: {{far: {{upstream: {{urls: ["{url}"]}}}}}}
        """)
        port = free_port()
        log = (tmp_path / "serve.log").open("wb")
        serving = subprocess.Popen([sys.executable, "-m", "animllm_cli", "--config", str(config), "serve", "far",
                                    "--port", str(port)], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            def status() -> dict | None:
                if serving.poll() is not None:
                    raise AssertionError(f"serve exited:\n{(tmp_path / 'serve.log').read_text()}")
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/admin/status", timeout=2).json()
                except httpx.HTTPError:
                    return None

            wait_until(lambda: status() is not None, REMOTE_START_BOUND_S, "the gateway to answer /admin/status")
            gateway = status()["gateway"]
            assert (gateway["event_loop"], gateway["http_parser"]) == (UVLOOP, HTTPTOOLS)
            shown = run_cli("status")
            assert shown.exit_code == 0, shown.stderr
            rows = [line.rstrip() for line in shown.stdout.splitlines()]
            assert f"server             {UVLOOP} / {HTTPTOOLS}" in rows and "without" not in shown.stdout, rows
        finally:
            os.killpg(serving.pid, signal.SIGINT)
            serving.wait(timeout=60)
            log.close()


def test_status_of_a_gateway_on_asyncio_says_what_it_runs_without(tmp_path: Path) -> None:
    """The tests' own gateways run on a plain asyncio loop of their thread: status reads the
    running loop, not what uvicorn was told, and says what it lacks and where to look."""
    running = start_gateway(tmp_path, fake_gateway_config(tmp_path))
    try:
        gateway = httpx.get(f"{running.url}/admin/status", timeout=10).json()["gateway"]
        assert gateway["event_loop"].startswith("asyncio (Python ") and gateway["http_parser"] == HTTPTOOLS
        shown = run_cli("status")
        assert shown.exit_code == 0, shown.stderr
        assert ("without uvloop: more CPU per relayed chunk; see `animllm doctor --only server`"
                in shown.stdout), shown.stdout
    finally:
        running.stop()

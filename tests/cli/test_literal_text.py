"""Text from outside that holds Rich markup prints literally through every command that
shows it: a model's name on a server, a path, a URL, a GPU's name, an answer. `[bold]x[/]`
stays `[bold]x[/]`, never `x` in bold (and never a markup error)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.chat.test_chat_markup import ANSWER, server  # noqa: F401  (a fixture: an OpenAI server answering markup)
from tests.support.gateways import fake_gateway_config, start_gateway, stop_bound_s
from tests.support.helpers import free_port, run_cli, write
from tests.support.waiting import wait_until

MARK = "[bold]x[/]"  # as a path: the directories "[bold]x[" and "]"


@dataclass
class Marked:
    config: Path
    source: Path          # the local model's directory
    url: str              # where `far` is served
    hub: Path             # the Hugging Face cache
    runs: Path            # where saved bench runs go (relative: short enough not to fold in a header)


@pytest.fixture
def marked(isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Marked:
    """./animllm.yaml: `m` from a local directory whose name holds markup, `far` served
    under a name that holds it at a URL that holds it (where nothing listens); the state
    dir and the Hugging Face cache lie in such directories too, and `m`'s engine log has a
    line of it."""
    source, url, hub = isolated_env / MARK, f"http://127.0.0.1:{free_port()}/{MARK}", tmp_path / MARK / "hub"
    source.mkdir(parents=True)
    state = tmp_path / MARK / "state"
    monkeypatch.setenv("ANIMLLM_STATE_DIR", str(state))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    write(state / "logs" / "m.log", f"loading {MARK}\n")
    config = write(isolated_env / "animllm.yaml", f"""
        inherit_defaults: false
        gpu: {{vram_gib: 16}}
        profiles: {{p: {{max_model_len: 1024}}}}
        default_model: m
        models:
          m: {{source: "./{MARK}", profile: p, tasks: [chat]}}
          far: {{upstream: {{urls: ["{url}"], model: "{MARK}"}}, tasks: [remote]}}
    """)
    return Marked(config, source, url, hub, Path("runs") / MARK)


def saved_runs(directory: Path) -> list[str]:
    from tests.support.saved_runs import saved_run

    directory.mkdir(parents=True)
    return [str(saved_run(directory / name)) for name in ("a.json", "b.json")]


# command -> (its arguments, what it must show: (the fixture's values) -> fragments)
CONFIG_COMMANDS = {
    "models": (["models"], lambda m: [f"./{MARK}"]),
    # a long path is cut in the middle to fit (a test's tmp path is long): its end shows
    "config show --explain": (["config", "show", "m", "--explain"], lambda m: [f"{m.config.parent.name}/{MARK}"]),
    "config show": (["config", "show", "far"], lambda m: [m.url, f"'{MARK}'"]),
    "plan": (["plan", "--vram", "16"], lambda m: [f"served by {m.url}"]),
    "doctor": (["doctor", "--only", "models,upstreams"], lambda m: [f"m ({m.source})", f"far: {m.url} unreachable"]),
    "pull": (["pull", "m"], lambda m: [str(m.source), f"cache {m.hub}"]),
    "logs": (["logs", "--model", "m"], lambda m: [f"loading {MARK}"]),
    "bench-compare": (["bench-compare"], lambda m: [f"A  {m.runs / 'a.json'}", f"B  {m.runs / 'b.json'}"]),
}


@pytest.mark.parametrize("args, shown", CONFIG_COMMANDS.values(), ids=CONFIG_COMMANDS.keys())
def test_commands_of_the_config_print_markup_literally(marked: Marked, args: list[str], shown) -> None:
    if args[-1] == "bench-compare":
        args = [*args, *saved_runs(marked.runs)]
    result = run_cli(*args)
    assert result.exit_code in (0, 1), result.stderr
    for text in shown(marked):
        assert text in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.fixture
def marked_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A gateway over fake engines on a GPU whose name holds markup, with `r` served under
    such a name at such a URL (where nothing listens): yields that URL."""
    from tests.fakes.nvml import FakeGpu, FakeNvml

    url = f"http://127.0.0.1:{free_port()}/{MARK}"
    upstream = {"urls": [url], "model": MARK, "health_interval_s": 0.2}
    config = fake_gateway_config(tmp_path,
                                 extra_models={"r": {"upstream": upstream, "tasks": ["remote"]}})
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    running = start_gateway(tmp_path, config, nvml=FakeNvml([FakeGpu(name=f"NVIDIA {MARK}")]))
    if not any(kind == "ready" for kind, _ in running.events):  # `unload a` needs it
        running.stop()
        pytest.fail(f"the gateway did not load a: {running.events}")
    remote = running.gateway.upstreams.get("r")
    wait_until(lambda: all(u.healthy is not None for u in remote.upstreams), 30, "the remote's first health check")
    yield url
    running.stop()


def _note_in_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's notes are its own text: one that holds markup, in every unload answer."""
    from animllm_cli.client.admin import AdminClient

    unload = AdminClient.unload
    monkeypatch.setattr(AdminClient, "unload", lambda self, *a, **k: unload(self, *a, **k).model_copy(
        update={"notes": [f"kept on {MARK}"]}))


GATEWAY_COMMANDS = {
    "status": (["status"], lambda url: [f"r (as '{MARK}' there)", f"r: {url} out", f"NVIDIA {MARK}"]),
    "ps": (["ps"], lambda url: [f"r: {url} out"]),
    "switch": (["switch", "r"], lambda url: [f"'r' is served by {url}"]),  # the gateway's note
    "unload": (["unload", "a"], lambda url: [f"(kept on {MARK})"]),
}


@pytest.mark.parametrize("args, shown", GATEWAY_COMMANDS.values(), ids=GATEWAY_COMMANDS.keys())
def test_commands_of_the_gateway_print_markup_literally(marked_gateway: str, monkeypatch: pytest.MonkeyPatch,
                                                       args: list[str], shown) -> None:
    _note_in_the_answer(monkeypatch)
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    for text in shown(marked_gateway):
        assert text in result.stdout + result.stderr, result.stdout + result.stderr


def test_serve_prints_the_url_literally(marked: Marked) -> None:
    from animllm_cli.config import load_config

    serve = subprocess.Popen([sys.executable, "-m", "animllm_cli", "serve", "far", "--port", str(free_port())],
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})
    try:
        wait_until(lambda: serve.poll() is not None or _answers(serve.pid), 60, "serve to answer or exit")
        serve.send_signal(signal.SIGTERM)
        _, stderr = serve.communicate(timeout=stop_bound_s(load_config(marked.config)))
    finally:
        serve.kill()
    assert f"far is served by {marked.url}\n" in stderr, stderr


def _answers(pid: int) -> bool:
    """The gateway of process `pid` has written its state file and answers /health."""
    import httpx

    from animllm_cli.runfile import read_state

    state = read_state()
    try:
        return bool(state and state.pid == pid and httpx.get(f"{state.url}/health", timeout=5).status_code == 200)
    except httpx.HTTPError:
        return False


def test_chat_prints_the_answer_literally(server: str) -> None:  # noqa: F811
    for args in (["-p", "hi"], ["-i"]):
        result = run_cli("chat", "m", *args, "--url", server, input="hello\n/exit\n")
        assert result.exit_code == 0, result.stderr
        assert result.stdout == f"{ANSWER}\n"

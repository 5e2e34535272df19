"""`animllm serve`: the gateway and its first model, in the foreground or detached."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from animllm_cli.cli import common

HostOption = Annotated[Optional[str], typer.Option("--host", metavar="HOST", show_default=False,
                                                   help="Bind address (default: server.host, 127.0.0.1).")]
PortOption = Annotated[Optional[int], typer.Option("--port", metavar="PORT", min=1, max=65535, show_default=False,
                                                   help="Gateway port (default: server.port, 8000).")]


def serve(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Argument(metavar="MODEL", help="Model to load first (default: default_model).",
                                                   autocompletion=common.complete_models, show_default=False)] = None,
    host: HostOption = None,
    port: PortOption = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once the model is ready; run in the background.")] = False,
    preload: Annotated[Optional[str], typer.Option("--preload", metavar="A,B", show_default=False,
                                                   help="Load these too, in order, beside each other where they fit "
                                                        "(default: pool.preload).")] = None,
    no_pull: Annotated[bool, typer.Option("--no-pull", help="Never download models missing from the Hugging Face "
                                                          "cache, at the start or for a request (the engine then "
                                                          "fetches them).")] = False,
    sets: common.SetOption = None,
    gpu_memory_utilization: common.GpuUtilOption = None,
    max_model_len: common.MaxModelLenOption = None,
    config: common.ConfigOption = None,
) -> None:
    """Start the gateway and load a model and the preloads.

    One OpenAI-compatible port for every configured model; Ctrl-C stops everything."""
    from animllm_cli import bind, runfile

    out = common.output(ctx)
    overrides = common.model_overrides(sets, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len)
    loaded = common.load(ctx, config, overrides)
    preloads = [loaded.catalogue.resolve(m.strip()) for m in (preload.split(",") if preload is not None
                                                              else loaded.config.pool.preload) if m.strip()]
    name = loaded.catalogue.resolve(model if model or not preloads else preloads[0])
    _check_engine_commands(out, loaded, [name, *preloads])  # a config error: before anything is touched
    host = host or loaded.config.server.host
    port = port or loaded.config.server.port
    key = bind.api_key(loaded)
    bind.check_bind(host, key, loaded.config.server.api_key_env, clients=bool(loaded.config.clients))
    runfile.ensure_not_running()
    _stop_leftovers(out, loaded)
    _check_port_free(host, port)
    if not no_pull:
        from animllm_cli.cli.pull import pull_missing

        pull_missing(out, loaded, [name, *preloads])
    if detach:
        argv = _child_argv(ctx, config, name, host, port, sets, gpu_memory_utilization, max_model_len)
        if no_pull:  # else pulled here, with its progress in this terminal: the gateway finds them in the cache
            argv.append("--no-pull")
        if preload is not None:
            argv += ["--preload", ",".join(preloads)]
        raise typer.Exit(_detach(out, loaded, argv, name, host, port))
    raise typer.Exit(_foreground(out, loaded, name, host, port, key, preloads, pull=not no_pull))


def _stop_leftovers(out, loaded) -> None:
    """A gateway that died without its cleanup may have left its engine holding the GPU
    and its port: stop it (only if it is provably ours) before starting another."""
    from animllm_cli.gateway import leftovers

    for item in leftovers.clean(loaded.config.engine.stop_grace_s):
        if item.left:
            out.warn(f"could not stop {item.describe()}: pids {item.left} still alive")
        else:
            out.warn(f"stopped {item.describe()}")


def _check_engine_commands(out, loaded, starting: list[str]) -> None:
    """Each model's engine command, spelt for the installed vLLM before anything starts:
    a setting that release lacks fails the models being started now (exit 2) and is a
    warning for the others, whose switch would fail the same way."""
    from animllm_cli.engine.command import build_each
    from animllm_cli.errors import ConfigError

    problems: list[str] = []
    for model, built in build_each(loaded, loaded.local_model_names()).items():
        if not isinstance(built, ConfigError):
            continue
        if model in starting:
            problems += built.problems
        else:
            out.warn(f"switching to {model} will fail: " + "; ".join(built.problems))
    if problems:
        raise ConfigError(problems, hint="change or remove those settings, or run a vLLM release that has them "
                                         "(engine.python); animllm doctor checks every model")


def _check_port_free(host: str, port: int) -> None:
    from animllm_cli.errors import AnimllmError
    from animllm_cli.bind import bind_error

    problem = bind_error(host, port)
    if problem:
        raise AnimllmError(f"cannot listen on {host}:{port}: {problem}",
                           hint="pick another with --port, or stop what holds it")


def endpoints_table(url: str):
    from animllm_cli.output import table

    rows = [["OpenAI base URL", f"{url}/v1"], ["chat", f"POST {url}/v1/chat/completions"],
            ["completions", f"POST {url}/v1/completions"], ["embeddings", f"POST {url}/v1/embeddings"],
            ["models", f"GET {url}/v1/models"], ["health / metrics", f"GET {url}/health, {url}/metrics"],
            ["admin", "animllm status | ps | switch MODEL | unload MODEL | logs -f | stop"]]
    return table("Endpoints", ["what", "where"], rows)


def _foreground(out, loaded, name: str, host: str, port: int, key: str | None, preloads: list[str], *,
                pull: bool) -> int:
    from animllm_cli.gateway import server as gateway_server

    from animllm_cli.output import phase_printer

    url = f"http://{host}:{port}"
    progress = phase_printer(out)

    remote = loaded.config.models[name].upstream

    def ready(report) -> None:
        if remote is not None:  # nothing to load: served elsewhere
            out.info(f"{name} is served by {', '.join(remote.urls)}")
        else:
            out.info(f"{name} ready in {report.load_s:.1f}s")
        for problem in _remote_key_problems(loaded):
            out.warn(problem)
        out.show(endpoints_table(url))
        out.info("Ctrl-C stops the gateway and its engines")

    def failed(exc: Exception) -> None:
        out.error(f"{name} could not be loaded: {exc}")

    def stopped(report) -> None:
        if report is None:
            out.info("gateway stopped; no engine was running")
        elif report.left:
            out.error(f"engine processes still alive after stop: {report.left}")
        else:
            out.info(f"gateway stopped; engine stopped in {report.stop_s:.2f}s, no engine process left "
                     f"(VRAM: {report.vram_note})")

    out.info(f"gateway on {url}, {'relaying' if remote else 'loading'} {name}")
    server, gateway = gateway_server.build(loaded, model=name, host=host, port=port, key=key, preload=preloads,
                                           hooks=gateway_server.Hooks(ready, failed, stopped, out.info),
                                           on_progress=progress, pull=pull)
    _run_until_signalled(server)
    return 1 if gateway.failed else 0


def _remote_key_problems(loaded) -> list[str]:
    """Remote models whose key variable is not set: each of their requests will fail; and
    clients with no key at all (their variable unset, none made by `animllm keys create`)."""
    from animllm_cli.access.keys import KeyStore
    from animllm_cli.client.upstream import MissingKey, upstream_key

    made = {record.client for record in KeyStore().records() if record.revoked is None} \
        if loaded.config.clients else set()
    problems = [f"client '{name}' has no key: {'set ' + spec.api_key_env + ' or ' if spec.api_key_env else ''}"
                f"run `animllm keys create {name}`" for name, spec in loaded.config.clients.items()
                if name not in made and not (spec.api_key_env and os.environ.get(spec.api_key_env))]
    for model in loaded.remote_model_names():
        try:
            upstream_key(loaded.config.models[model].upstream)
        except MissingKey as exc:
            problems.append(f"{model} cannot be served: {exc}")
    return problems


def _run_until_signalled(server) -> None:
    """uvicorn shuts down cleanly on SIGINT and SIGTERM; a closed terminal (SIGHUP) gets the
    same clean shutdown (the engine stopped, the state file removed), then SIGHUP's usual
    end, as uvicorn re-raises SIGTERM. Under `nohup` (SIGHUP ignored) nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        server.run()
        return
    hung_up: list[int] = []

    def on_hangup(sig, frame) -> None:
        hung_up.append(sig)
        server.handle_exit(sig, frame)

    previous = signal.signal(signal.SIGHUP, on_hangup)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGHUP, previous)
    if hung_up:
        signal.raise_signal(signal.SIGHUP)


def _child_argv(ctx, config, name, host, port, sets, gpu_util, max_len) -> list[str]:
    config_path = config or common.state(ctx).config
    argv = [sys.executable, "-m", "animllm_cli"]
    if config_path:
        argv += ["--config", str(Path(config_path).resolve())]
    argv += ["serve", name, "--host", host, "--port", str(port)]
    for item in sets or []:
        argv += ["--set", item]
    if gpu_util is not None:
        argv += ["--gpu-memory-utilization", str(gpu_util)]
    if max_len is not None:
        argv += ["--max-model-len", str(max_len)]
    return argv


def _detach(out, loaded, argv: list[str], name: str, host: str, port: int) -> int:
    from animllm_cli import paths
    from animllm_cli.client.admin import AdminClient
    from animllm_cli.errors import AnimllmError
    from animllm_cli.runfile import read_state

    log = paths.state_dir() / "gateway.log"
    with paths.open_private(log, "wb") as sink:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                 start_new_session=True, env={**os.environ, "NO_COLOR": "1"})
    for problem in _remote_key_problems(loaded):  # the gateway inherits this environment
        out.warn(problem)
    deadline = time.monotonic() + loaded.config.engine.start_timeout_s + 60
    phase = None
    try:
        while time.monotonic() < deadline:
            if child.poll() is not None:
                tail = "\n".join(f"    {line}" for line in log.read_text(errors="replace").splitlines()[-25:])
                out.error(f"the gateway exited with code {child.returncode} before {name} was ready; "
                          f"its log ({log}):\n{tail}")
                return 1
            state = read_state()
            if state and state.pid == child.pid:
                try:
                    status = AdminClient(state, loaded.config.server.api_key_env).status()
                except AnimllmError:  # not answering yet
                    time.sleep(0.3)
                    continue
                if any(r.model == name for r in status.remotes):  # served elsewhere: up once it answers
                    out.info(f"{name} is served elsewhere; gateway pid {child.pid}, log {log}")
                    out.show(endpoints_table(state.url))
                    return 0
                engine = next((e for e in status.engines if e.model == name), status.engine)
                if engine.phase and engine.phase != phase:
                    phase = engine.phase
                    out.info(f"  {name}: {phase}")
                if engine.state == "ready" and engine.model == name:  # preloads may still be loading
                    out.info(f"{name} ready; gateway pid {child.pid}, log {log}")
                    out.show(endpoints_table(state.url))
                    return 0
            time.sleep(0.3)
        out.error(f"{name} not ready in time; stopping the gateway")
    except KeyboardInterrupt:
        out.info("interrupted: stopping the gateway")
        _terminate(child)
        raise
    _terminate(child)
    return 1


def _terminate(child: subprocess.Popen) -> None:
    """The detached gateway and anything in its session: SIGTERM, then SIGKILL."""
    from animllm_cli.engine import processes

    processes.end_group(child.pid, {}, grace_s=60)
    child.wait()

"""`animllm status`, `ps`, `switch`, `unload`, `stop`, `logs`: the running gateway, from another terminal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from animllm_cli.cli import common

KILLED_EXIT_S = 5.0  # a process SIGKILL cannot end in this long is stuck in the kernel (D state)


def _client(ctx: typer.Context, config: Optional[Path]):
    return _client_of(common.load(ctx, config))


def _client_of(loaded):
    from animllm_cli.client.admin import AdminClient

    return AdminClient.find(loaded.config.server.api_key_env)


def _served_elsewhere(loaded, model: str) -> bool:
    """The config says `model` is remote (only to word the wait: the gateway's answer decides)."""
    name = loaded.catalogue.find(model)
    return name is not None and loaded.config.models[name].remote


def status(ctx: typer.Context, json_output: common.JsonOption = False, config: common.ConfigOption = None) -> None:
    """What the gateway has loaded: state, VRAM, queue, switches."""
    from animllm_cli.client.admin import NotRunning

    out = common.output(ctx)
    try:
        client = _client(ctx, config)
    except NotRunning:
        _name_leftovers(out, json_output)
        raise
    out.result(client.status(), lambda report: _show_status(out, report), json=json_output)


def _name_leftovers(out, json_output: bool) -> None:
    """No gateway runs: say so, and name the engines a dead one left (`stop` ends them)."""
    from animllm_cli.errors import AnimllmError
    from animllm_cli.gateway import leftovers

    left = leftovers.left_running()
    if left is None:
        return
    if json_output:
        out.json(left)
    raise AnimllmError(left.message(), hint="`animllm stop` ends them")


def _show_status(out, report) -> None:
    from animllm_cli.views.gateway import engines_table, status_table

    out.show(status_table(report))
    if report.engines or report.remotes:
        out.show(engines_table(report.engines, report.remotes))


def ps(ctx: typer.Context, json_output: common.JsonOption = False, config: common.ConfigOption = None) -> None:
    """The resident models: state, VRAM, requests, keep-alive.

    Per model: GPU(s), state, share, VRAM measured, requests running and waiting, idle time."""
    from animllm_cli.views.gateway import PsView, engines_table

    out = common.output(ctx)
    pool = PsView.of(_client(ctx, config).status())
    out.result(pool, lambda view: out.show(engines_table(view.engines, view.remotes)), json=json_output)


def unload(ctx: typer.Context, model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name, alias or task.",
                                                                    autocompletion=common.complete_models)],
           asleep: Annotated[bool, typer.Option("--sleep", help="Send it to sleep (vLLM sleep mode: it wakes in "
                                                                 "seconds) where it can, rather than stop it.")] = False,
           json_output: common.JsonOption = False, config: common.ConfigOption = None) -> None:
    """Free one model's engine: stop it, or put it to sleep.

    Its in-flight requests finish first; requests that come for it later load it again."""
    from animllm_cli.views.gateway import unloaded

    out = common.output(ctx)
    loaded = common.load(ctx, config)
    client = _client_of(loaded)
    waiting = f"asking the gateway to unload {model}" if _served_elsewhere(loaded, model) else \
        f"unloading {model} (waits for its in-flight requests)"
    with out.status(waiting):
        report = client.unload(model, sleep=asleep)
    out.result(report, lambda r: out.info(unloaded(r, model)), json=json_output)


def switch(ctx: typer.Context, model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name, alias or task.",
                                                                    autocompletion=common.complete_models)],
           no_pull: Annotated[bool, typer.Option("--no-pull", help="Do not first download the model when the "
                                                                 "Hugging Face cache lacks it (the engine then fetches it).")] = False,
           json_output: common.JsonOption = False, config: common.ConfigOption = None) -> None:
    """Load a model now, evicting only what it must.

    The evicted models' in-flight requests finish first; then the timings are reported."""
    out = common.output(ctx)
    loaded = common.load(ctx, config)
    client = _client_of(loaded)
    name = common.model_resolver(loaded)(model)[0]  # as the gateway will: a task picks a loaded model first
    if not no_pull and name in loaded.local_model_names():
        # Before anything is evicted: the download (minutes) must not happen with the GPU emptied.
        from animllm_cli.cli.pull import pull_missing

        pull_missing(out, loaded, [name])
    waiting = f"asking the gateway about {model}" if _served_elsewhere(loaded, model) else \
        f"loading {model} (an eviction waits for in-flight requests)"
    with out.status(waiting):
        report = client.switch(model)
    out.result(report, lambda r: _show_switch(out, r), json=json_output)


def _show_switch(out, report) -> None:
    from animllm_cli.views.gateway import switch_said, switch_table

    said = switch_said(report)
    if said is not None:
        out.text(said)  # the result itself: data, kept by -q
    else:
        out.show(switch_table(report))


def stop(ctx: typer.Context, json_output: common.JsonOption = False, config: common.ConfigOption = None) -> None:
    """Stop the gateway and its engines; confirm nothing is left."""
    import psutil

    from animllm_cli.client.admin import GatewayUnreachable, NotRunning
    from animllm_cli.views.gateway import StopResult

    out = common.output(ctx)
    try:
        client = _client(ctx, config)
    except NotRunning:
        _stop_leftovers(ctx, out, config, json_output)
        return
    engine = common.load(ctx, config).config.engine
    pid = client.state.pid
    groups = [group.pgid for group in client.state.engines]  # what the state file says it runs
    started = time.monotonic()
    try:
        engine_pids = client.stop().engine_pids
        bound = engine.stop_grace_s + engine.vram_release_timeout_s + 60  # the gateway stops its engines first
    except GatewayUnreachable as unanswered:  # our gateway (the state file proved it): wedged, or on its way out
        out.warn(f"the gateway (pid {pid}) did not answer its stop request ({unanswered.reason})")
        engine_pids, bound = [], engine.stop_grace_s
    forced, ended = None, []
    if not _exited(pid, bound):
        forced = _force_end(out, pid, bound, engine.stop_grace_s)
        ended = _clean_leftovers(out, engine.stop_grace_s, "")  # its engines, as for a dead gateway
    from animllm_cli.engine import processes

    left = sorted({p for p in engine_pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
                  | {p for pgid in groups for p in processes.group_members(pgid)})
    _report_stop(out, StopResult(True, pid, round(time.monotonic() - started, 2), left,
                                 [item.pgid for item in ended], forced), json_output)


def _force_end(out, pid: int, waited_s: float, grace_s: float) -> str | None:
    """End a gateway that did not exit by itself: SIGTERM, then SIGKILL after `grace_s`.
    Returns the signal that ended it (None: it exited just before)."""
    import psutil

    from animllm_cli.errors import AnimllmError

    said = f"the gateway (pid {pid}) did not exit within {waited_s:g}s: sent SIGTERM"
    try:
        gateway = psutil.Process(pid)
        gateway.terminate()
    except psutil.NoSuchProcess:
        return None
    if _exited(pid, grace_s):
        out.warn(said)
        return "SIGTERM"
    gateway.kill()
    out.warn(f"{said}; it did not exit within {grace_s:g}s: sent SIGKILL")
    if not _exited(pid, KILLED_EXIT_S):
        raise AnimllmError(f"the gateway (pid {pid}) is still there {KILLED_EXIT_S:g}s after SIGKILL")
    return "SIGKILL"


def _stop_leftovers(ctx: typer.Context, out, config: Optional[Path], json_output: bool) -> None:
    """No gateway runs, but one that died without its cleanup may have left its engines
    (only those provably ours are stopped). Nothing at all: "no gateway is running"."""
    from animllm_cli.client.admin import NotRunning
    from animllm_cli.views.gateway import StopResult

    started = time.monotonic()
    stopped = _clean_leftovers(out, common.load(ctx, config).config.engine.stop_grace_s, "no gateway is running; ")
    if not stopped:
        raise NotRunning()
    left = sorted(pid for item in stopped for pid in item.left)
    _report_stop(out, StopResult(True, stopped[0].gateway_pid, round(time.monotonic() - started, 2), left,
                                 [item.pgid for item in stopped]), json_output)


def _clean_leftovers(out, grace_s: float, said: str) -> list:
    """Stop the engines a dead gateway left (gateway/leftovers.py), naming each."""
    from animllm_cli.gateway import leftovers

    stopped = leftovers.clean(grace_s)
    for item in stopped:
        out.info(f"{said}stopped {item.describe()}")
    return stopped


def _report_stop(out, result, json_output: bool) -> None:
    """The result; exit 1 when engine processes outlived the stop."""
    from animllm_cli.views.gateway import stopped

    out.result(result, lambda r: (out.error if r.engine_processes_left else out.info)(stopped(r)), json=json_output)
    if result.engine_processes_left:
        raise typer.Exit(1)


def _exited(pid: int, timeout_s: float) -> bool:
    """The process is gone or a zombie (exited; its parent has not reaped it yet) in time."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def logs(ctx: typer.Context,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
         lines: Annotated[int, typer.Option("--lines", "-n", metavar="N", min=0, help="How many lines to show first.")] = 50,
         model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="MODEL", help="This model's engine log (default: the loaded one).")] = None,
         config: common.ConfigOption = None) -> None:
    """Print (-f: follow) the engine log of a model."""
    from animllm_cli import paths
    from animllm_cli.errors import AnimllmError

    loaded = common.load(ctx, config)
    if model:
        name = loaded.catalogue.resolve(model, loaded=common.loaded_models(loaded))
        _runs_here(loaded, name)
        path = paths.engine_log(name)
    else:
        path = _current_log(loaded)
    if not path.exists():
        raise AnimllmError(f"no engine log at {path}", hint="it appears once the model has been started")
    with path.open("r", errors="replace") as handle:
        for line in handle.readlines()[-lines:] if lines else []:
            typer.echo(line.rstrip("\n"))
        while follow:
            line = handle.readline()
            if line:
                typer.echo(line.rstrip("\n"))
                continue
            if not path.exists() or path.stat().st_ino != _inode(handle):  # rotated
                handle = path.open("r", errors="replace")
            time.sleep(0.2)


def _runs_here(loaded, name: str) -> None:
    """A model served elsewhere has no engine here, so no log to show."""
    upstream = loaded.config.models[name].upstream
    if upstream is not None:
        from animllm_cli.errors import UsageError

        raise UsageError(f"'{name}' is served by {', '.join(upstream.urls)}: its log is on that server")


def _inode(handle) -> int:
    import os

    return os.fstat(handle.fileno()).st_ino


def _current_log(loaded) -> Path:
    """The loaded model's log, as the gateway names it; with no gateway, the newest log."""
    from animllm_cli import paths
    from animllm_cli.client.admin import AdminClient, NotRunning

    try:
        log_path = AdminClient.find(loaded.config.server.api_key_env).status().engine.log_path
        if log_path:
            return Path(log_path)
    except NotRunning:
        pass
    log_dir = paths.engine_log_dir()
    candidates = sorted(log_dir.glob("*.log"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        from animllm_cli.errors import AnimllmError

        raise AnimllmError(f"no engine logs in {log_dir} yet", hint="start a model with `animllm serve`")
    return candidates[-1]

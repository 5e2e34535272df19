"""`animllm status`, `ps`, `switch`, `unload`, `stop`, `logs`: the running gateway, from another terminal."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer

from animllm_cli.cli import common





def _client(ctx: typer.Context, config: Optional[Path]):
    return _client_of(common.load(ctx, config))


def _client_of(loaded):
    from animllm_cli.client.admin import AdminClient

    return AdminClient.find(loaded.config.server.api_key_env)


def _served_elsewhere(loaded, model: str) -> bool:
    """The config says `model` is remote (only to word the wait: the gateway's answer decides)."""
    name = loaded.catalogue.find(model)
    return name is not None and loaded.config.models[name].remote


def _secs(value) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _gib(value) -> str:
    from animllm_cli.units import GIB

    return "-" if value is None else f"{value / GIB:.1f} GiB"


def status(ctx: typer.Context, json_output: common.JsonOption = False, config: common.ConfigOption = None) -> None:
    """What the gateway has loaded, its state, VRAM, queue and last switch."""
    out = common.output(ctx)
    out.result(_client(ctx, config).status(), lambda report: _show_status(out, report), json=json_output)


def _show_status(out, report) -> None:
    from animllm_cli.wire import SWITCH_REASONS

    from animllm_cli.output import plain, table

    # Text from the server (reasons, errors, names) is shown as it is, never as Rich markup.
    engine, last = report.engine, report.engine.last_switch
    phase = f", {engine.phase}" if engine.state != "ready" and engine.phase else ""
    rows = [["gateway", f"{report.url} (pid {report.gateway.pid}, up {report.gateway.uptime_s:.0f}s)"],
            ["model", plain(f"{engine.model or '-'} ({engine.state}{phase})")],
            ["loaded for", f"{time.time() - engine.loaded_since:.0f}s" if engine.loaded_since else "-"],
            ["queue / in flight", f"{report.queue_depth} / {report.in_flight}"]]
    for model, queue in sorted(report.queues.items()):
        rows.append([plain(f"waiting for {model}"), f"{queue.waiting} (oldest {queue.oldest_wait_s:.0f}s)"])
    if engine.death_reason:
        rows.append(["engine died", plain(engine.death_reason)])
    for gpu in report.vram.gpus:
        rows.append([f"GPU {gpu.index}", plain(f"{gpu.name}: {_gib(gpu.used_bytes)} used of {_gib(gpu.total_bytes)}")])
    if report.vram.error:
        rows.append(["VRAM", plain(report.vram.error)])
    if last:
        rows.append(["last switch", plain(f"{last.from_model or '-'} -> {last.to_model}: {last.outcome} in "
                                          f"{_secs(last.total_s)}" + (f" ({last.error})" if last.error else "")
                                          + (f" ({SWITCH_REASONS.get(last.reason, last.reason)})"
                                             if last.reason else "")
                                          + (f", woken from level {last.wake_level}" if last.load_kind == "wake"
                                             else ""))])
    if report.sleep_mode:
        rows.append(["sleep mode", plain(("on: " if report.sleep_mode.available else "off: ") + report.sleep_mode.reason)])
    if report.busy:
        rows.append(["refusing requests", plain(report.busy)])
    rows += [["remote", plain(_remote_summary(remote))] for remote in report.remotes]
    out.show(table("animllm gateway", ["", ""], rows))
    if report.engines or report.remotes:
        from animllm_cli.views.gateway import engines_table

        out.show(engines_table(report.engines, report.remotes))


def _remote_summary(remote) -> str:
    """`status`: a model served elsewhere, in one line: how many of its URLs serve it now."""
    healthy = sum(upstream.healthy is True for upstream in remote.upstreams)
    there = f" (as '{remote.served_name}' there)" if remote.served_name != remote.model else ""
    problem = f"; {remote.key_problem}" if remote.key_problem else ""
    return f"{remote.model}{there}: {healthy}/{len(remote.upstreams)} URLs healthy{problem}"


def ps(ctx: typer.Context, json_output: common.JsonOption = False, config: common.ConfigOption = None) -> None:
    """The resident models: GPU(s), state, VRAM (measured), requests, idle time and keep-alive."""
    from animllm_cli.views.gateway import engines_table

    out = common.output(ctx)
    report = _client(ctx, config).status()
    pool = PoolView(report.url, report.engines, report.engine.switching_to, report.queues, report.remotes)
    out.result(pool, lambda view: out.show(engines_table(view.engines, view.remotes)), json=json_output)


@dataclass
class PoolView:
    """`ps --json`: the engines of `status --json`, with what is being loaded and what waits,
    and the models served elsewhere."""
    url: str | None
    engines: list
    switching_to: str | None
    queues: dict
    remotes: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"schema_version": 1, "url": self.url, "switching_to": self.switching_to,
                "engines": [e.to_json() for e in self.engines],
                "queues": {m: q.to_json() for m, q in self.queues.items()},
                "remotes": [r.to_json() for r in self.remotes]}


def unload(ctx: typer.Context, model: Annotated[str, typer.Argument(help="Model name, alias or task.",
                                                                    autocompletion=common.complete_models)],
           asleep: Annotated[bool, typer.Option("--sleep", help="Send it to sleep (vLLM sleep mode: it wakes in "
                                                                 "seconds) where it can, rather than stop it.")] = False,
           json_output: common.JsonOption = False, config: common.ConfigOption = None) -> None:
    """Free one model's engine (after its in-flight requests finish)."""
    out = common.output(ctx)
    loaded = common.load(ctx, config)
    client = _client_of(loaded)
    waiting = f"asking the gateway to unload {model}" if _served_elsewhere(loaded, model) else \
        f"unloading {model} (waits for its in-flight requests)"
    with out.status(waiting):
        report = client.unload(model, sleep=asleep)
    out.result(report, lambda r: out.info(_unloaded(r, model)), json=json_output)


def _unloaded(report, model: str) -> str:
    from animllm_cli.output import plain

    if report.slept:
        return f"{', '.join(report.slept)} asleep in {_secs(report.sleep_s)}"
    why = f" ({plain(report.notes[0])})" if report.notes else ""
    return f"unloaded {', '.join(report.evicted) or model}: stopped in {_secs(report.stop_s)}, VRAM {plain_note(report)}{why}"


def plain_note(report) -> str:
    from animllm_cli.output import plain

    return _secs(report.vram_release_s) if report.vram_release_s is not None else plain(report.vram_note or "-")


def switch(ctx: typer.Context, model: Annotated[str, typer.Argument(help="Model name, alias or task.", autocompletion=common.complete_models)],
           no_pull: Annotated[bool, typer.Option("--no-pull", help="Do not first download the model when the "
                                                                 "Hugging Face cache lacks it (the engine then fetches it).")] = False,
           json_output: common.JsonOption = False, config: common.ConfigOption = None) -> None:
    """Load a model now, evicting only what it must (after their in-flight requests finish); report the timings."""
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
    from animllm_cli.output import plain, table

    if report.outcome == "already loaded":
        out.text(f"{report.to_model} is already loaded")  # the result itself: data, kept by -q
        return
    if report.outcome == "remote":  # served elsewhere: the gateway's note says where
        out.text(report.notes[0] if report.notes else f"{report.to_model} is served elsewhere: nothing to load here")
        return
    released = plain_note(report)
    evicted = ", ".join(f"{m} asleep" if m in report.slept else f"{m} stopped" for m in report.evicted) \
        or "nothing (it fit beside the resident models)"
    if report.load_kind == "wake":
        load = ["wake", f"woke {report.to_model} from level {report.wake_level} in {_secs(report.wake_s)}"]
    else:
        load = ["load to ready", _secs(report.load_s)]
    rows = [["from -> to", plain(f"{report.from_model or '-'} -> {report.to_model}")],
            ["placed on", f"GPU {', '.join(map(str, report.gpus)) or '-'}"], ["evicted", plain(evicted)],
            *([["sleep", _secs(report.sleep_s)]] if report.slept else []),
            ["stop", _secs(report.stop_s)], ["VRAM released", released],
            *([["wake failed", plain(report.wake_error)]] if report.wake_error else []),
            load, ["total", _secs(report.total_s)],
            ["VRAM free before / after", f"{_gib(report.vram_free_before)} / {_gib(report.vram_free_after)}"],
            *(["note", plain(note)] for note in report.notes)]
    out.show(table("Switch", ["", ""], rows))


@dataclass
class StopResult:
    stopped: bool
    gateway_pid: int
    seconds: float
    engine_processes_left: list[int]
    leftovers_stopped: list[int] = field(default_factory=list)  # engine groups a dead gateway left


def stop(ctx: typer.Context, json_output: common.JsonOption = False, config: common.ConfigOption = None) -> None:
    """Stop the gateway and its engine, and confirm that nothing is left."""
    import psutil

    from animllm_cli.client.admin import NotRunning
    from animllm_cli.errors import AnimllmError

    out = common.output(ctx)
    try:
        client = _client(ctx, config)
    except NotRunning:
        _stop_leftovers(ctx, out, config, json_output)
        return
    from animllm_cli.client.admin import GatewayUnreachable

    pid = client.state.pid
    groups = [group.pgid for group in client.state.engines]  # what the state file says it runs
    try:
        engine_pids = client.stop().engine_pids
    except GatewayUnreachable:  # it does not answer: our gateway (the state file proved it), so end it by signal
        engine_pids = []
        psutil.Process(pid).terminate()
    started = time.monotonic()
    engine = common.load(ctx, config).config.engine
    bound = engine.stop_grace_s + engine.vram_release_timeout_s + 60  # the gateway stops its engine first
    if not _exited(pid, bound):
        raise AnimllmError(f"the gateway (pid {pid}) did not exit within {bound:g}s")
    from animllm_cli.engine import processes

    left = sorted({p for p in engine_pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
                  | {p for pgid in groups for p in processes.group_members(pgid)})
    result = StopResult(True, pid, round(time.monotonic() - started, 2), left)
    out.result(result, lambda r: _show_stop(out, r), json=json_output)
    if left:
        raise typer.Exit(1)


def _stop_leftovers(ctx: typer.Context, out, config: Optional[Path], json_output: bool) -> None:
    """No gateway runs, but one that died without its cleanup may have left its engines
    (only those provably ours are stopped). Nothing at all: "no gateway is running"."""
    from animllm_cli.client.admin import NotRunning
    from animllm_cli.gateway import leftovers

    started = time.monotonic()
    stopped = leftovers.clean(common.load(ctx, config).config.engine.stop_grace_s)
    if not stopped:
        raise NotRunning()
    for item in stopped:
        out.info(f"no gateway is running; stopped {item.describe()}")
    left = sorted(pid for item in stopped for pid in item.left)
    result = StopResult(True, stopped[0].gateway_pid, round(time.monotonic() - started, 2), left,
                        [item.pgid for item in stopped])
    out.result(result, lambda r: _show_leftovers_stopped(out, r), json=json_output)
    if left:
        raise typer.Exit(1)


def _show_leftovers_stopped(out, result: StopResult) -> None:
    if result.engine_processes_left:
        out.error(f"engine processes are still alive: {result.engine_processes_left}")
    else:
        out.info(f"stopped in {result.seconds:.2f}s; no engine process left")


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


def _show_stop(out, result: StopResult) -> None:
    if result.engine_processes_left:
        out.error(f"gateway stopped, but engine processes are still alive: {result.engine_processes_left}")
    else:
        out.info(f"gateway (pid {result.gateway_pid}) stopped in {result.seconds:.2f}s; no engine process left")


def logs(ctx: typer.Context,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
         lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="How many lines to show first.")] = 50,
         model: Annotated[Optional[str], typer.Option("--model", "-m", help="This model's engine log (default: the loaded one).")] = None,
         config: common.ConfigOption = None) -> None:
    """Print the engine log of the loaded model (or of --model)."""
    from animllm_cli import paths
    from animllm_cli.errors import AnimllmError

    loaded = common.load(ctx, config)
    log_dir = paths.state_dir() / "logs"
    if model:
        name = loaded.catalogue.resolve(model, loaded=common.loaded_models(loaded))
        _runs_here(loaded, name)
        path = log_dir / f"{name}.log"
    else:
        path = _current_log(loaded, log_dir)
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


def _current_log(loaded, log_dir: Path) -> Path:
    from animllm_cli.client.admin import AdminClient, NotRunning

    try:
        log_path = AdminClient.find(loaded.config.server.api_key_env).status().engine.log_path
        if log_path:
            return Path(log_path)
    except NotRunning:
        pass
    candidates = sorted(log_dir.glob("*.log"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        from animllm_cli.errors import AnimllmError

        raise AnimllmError(f"no engine logs in {log_dir} yet", hint="start a model with `animllm serve`")
    return candidates[-1]

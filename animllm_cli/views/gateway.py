"""What the gateway's answers look like in a terminal: the tables of `status`, `ps` and
`switch`, the lines of `unload` and `stop`, for the commands and the demo alike. Built
from the wire schema only; every text in them is literal (see animllm_cli.output)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from animllm_cli.output import table
from animllm_cli.server_stack import FAST_HTTP, FAST_LOOP
from animllm_cli.units import gib, gib_figure


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


# --------------------------------------------------------------------------- status, ps
def status_table(report) -> Any:
    """`status`: the gateway, the model loaded last and what waits, VRAM, the last switch,
    sleep mode, and one line per model served elsewhere."""
    rows = [*_load_rows(report), *_vram_rows(report.vram)]
    if report.engine.last_switch:
        rows.append(["last switch", last_switch(report.engine.last_switch)])
        rows += _death_rows(report.engine.last_switch)
    if report.sleep_mode:
        rows.append(["sleep mode", ("on: " if report.sleep_mode.available else "off: ") + report.sleep_mode.reason])
    if report.busy:
        rows.append(["refusing requests", report.busy])
    rows += [["remote", remote_summary(remote)] for remote in report.remotes]
    return table("animllm gateway", ["", ""], rows)


def _load_rows(report) -> list[list[str]]:
    engine = report.engine
    phase = f", {engine.phase}" if engine.state != "ready" and engine.phase else ""
    rows = [["gateway", f"{report.url} (pid {report.gateway.pid}, up {report.gateway.uptime_s:.0f}s)"],
            *([["server", server_line(report.gateway)]] if report.gateway.event_loop else []),
            ["model", f"{engine.model or '-'} ({engine.state}{phase})"],
            ["loaded for", f"{time.time() - engine.loaded_since:.0f}s" if engine.loaded_since else "-"],
            ["queue / in flight", f"{report.queue_depth} / {report.in_flight}"]]
    rows += [["waiting for", f"{model}: {queue.waiting} (oldest {queue.oldest_wait_s:.0f}s)"]
             for model, queue in sorted(report.queues.items())]
    rows += [["client", f"{name}: {queue.summary()}"] for name, queue in sorted(report.clients.items())]
    return rows + ([["engine died", engine.death_reason]] if engine.death_reason else [])


def server_line(gateway) -> str:
    """The event loop and HTTP parser the gateway runs on; where it runs without uvloop or
    httptools, that it relays with more CPU per chunk, and where to look."""
    text = f"{gateway.event_loop} / {gateway.http_parser or '?'}"
    slow = [fast for used, fast in ((gateway.event_loop, FAST_LOOP), (gateway.http_parser, FAST_HTTP))
            if used is not None and used.split()[0] != fast]
    if slow:
        text += f" (without {' and '.join(slow)}: more CPU per relayed chunk; see `animllm doctor --only server`)"
    return text


def _vram_rows(vram) -> list[list[str]]:
    rows = [[f"GPU {gpu.index}", f"{gpu.name}: {gib(gpu.used_bytes)} used of {gib(gpu.total_bytes)}"]
            for gpu in vram.gpus]
    return rows + ([["VRAM", vram.error]] if vram.error else [])


def _death_rows(switch) -> list[list[str]]:
    """A restart's diagnosis: how the engine it replaced died."""
    return [["restarted after", switch.death.summary()]] if switch.death else []


def last_switch(switch) -> str:
    """A finished switch in one line: from, to, outcome and time, its error, why, and whether it woke."""
    from animllm_cli.wire import SWITCH_REASONS

    error = f" ({switch.error})" if switch.error else ""
    reason = f" ({SWITCH_REASONS.get(switch.reason, switch.reason)})" if switch.reason else ""
    woke = f", woken from level {switch.wake_level}" if switch.load_kind == "wake" else ""
    return (f"{switch.from_model or '-'} -> {switch.to_model}: {switch.outcome} in {seconds(switch.total_s)}"
            f"{error}{reason}{woke}")


def remote_summary(remote) -> str:
    """`status`: a model served elsewhere, in one line: how many of its URLs serve it now."""
    healthy = sum(upstream.healthy is True for upstream in remote.upstreams)
    there = f" (as '{remote.served_name}' there)" if remote.served_name != remote.model else ""
    problem = f"; {remote.key_problem}" if remote.key_problem else ""
    return f"{remote.model}{there}: {healthy}/{len(remote.upstreams)} URLs healthy{problem}"


@dataclass
class PsView:
    """`ps --json`: the engines of `status --json`, with what is being loaded and what waits,
    and the models served elsewhere."""
    url: str | None
    engines: list
    switching_to: str | None
    queues: dict
    remotes: list = field(default_factory=list)
    switching: list = field(default_factory=list)  # every model being loaded, oldest first (switching_to: the first)

    @classmethod
    def of(cls, report) -> PsView:
        return cls(report.url, report.engines, report.engine.switching_to, report.queues, report.remotes,
                   report.engine.switching)

    def to_json(self) -> dict:
        return {"schema_version": 1, "url": self.url, "switching_to": self.switching_to, "switching": self.switching,
                "engines": [e.to_json() for e in self.engines],
                "queues": {m: q.to_json() for m, q in self.queues.items()},
                "remotes": [r.to_json() for r in self.remotes]}


def engines_table(engines, remotes=()) -> Any:
    """`ps`: one row per engine, narrow enough for 80 columns. VRAM as NVML measures it,
    or the plan's estimate (marked ~) until it has. A model served elsewhere is a row with
    its requests only, its URLs below the table."""
    rows = [_engine_row(e) for e in engines]
    rows += [[r.model, "remote", "-", "-", "-", "-", f"{r.in_flight}/{r.waiting}", "-", "-"] for r in remotes]
    asleep = [f"{e.model}: {sleeping(e)}" for e in engines if e.sleep_level]
    below = asleep + [line for remote in remotes for line in served_at(remote)]
    title = "Resident and remote models" if remotes else "Resident models"
    # below the table: a state cell this long would not fit 80 columns
    return table(f"{title} (VRAM GiB: NVML per process; ~ the plan's estimate)",
                 ["model", "state", "GPU", "share", "VRAM", "peak", "run/wait", "idle", "unload"], rows,
                 no_wrap=("model", "state", "VRAM", "unload"), below=("peak", "share", "idle", "GPU"),
                 caption="\n".join(below) or None)


def _engine_row(engine) -> list[str]:
    return [engine.model or "-", engine.state, ",".join(map(str, engine.gpus)) or "-",
            "-" if engine.share is None else f"{engine.share:g}", _vram(engine.vram_bytes, engine.vram_planned_bytes),
            _vram(engine.vram_peak_bytes), f"{engine.in_flight}/{engine.waiting}",
            "-" if engine.idle_s is None else f"{engine.idle_s:.0f}s", _unload(engine)]


def _vram(measured: int | None, planned: int | None = None) -> str:
    if measured is not None:
        return gib_figure(measured)
    return f"~{gib_figure(planned)}" if planned else "-"


def _unload(engine) -> str:
    if engine.pinned:
        return "pinned"
    if engine.keep_alive_s is None or engine.keep_alive_s < 0:
        return "never"
    return f"in {engine.unload_in_s:.0f}s" if engine.unload_in_s is not None else f"{engine.keep_alive_s:g}s idle"


def served_at(remote) -> list[str]:
    """A remote model's URLs, one line each: healthy, not checked yet, or out and why
    (the missing key once, not on every URL it takes out)."""
    lines = [f"{remote.model}: {remote.key_problem}"] if remote.key_problem else []
    for upstream in remote.upstreams:
        if upstream.healthy is None:
            health = "not checked yet"
        elif upstream.healthy:
            health = "healthy"
        else:
            health = "out" if upstream.problem in (None, remote.key_problem) else f"out: {upstream.problem}"
        lines.append(f"{remote.model}: {upstream.url} {health}")
    return lines


def sleeping(engine) -> str:
    host = f", weights in host RAM: {gib(engine.host_bytes)}" if engine.host_bytes else \
        ", weights dropped" if engine.sleep_level == 2 else ""
    return f"sleeping (level {engine.sleep_level}{host})"


# --------------------------------------------------------------------------- switch, unload, stop
def switch_said(report) -> str | None:
    """`switch`: the one line of an answer that loaded nothing (already loaded, or served
    elsewhere: the gateway's note says where); None when something was loaded."""
    if report.outcome == "already loaded":
        return f"{report.to_model} is already loaded"
    if report.outcome == "remote":
        return report.notes[0] if report.notes else f"{report.to_model} is served elsewhere: nothing to load here"
    return None


def switch_table(report) -> Any:
    """`switch`: what was evicted and how, where the model went, and each step's time."""
    evicted = ", ".join(f"{m} asleep" if m in report.slept else f"{m} stopped" for m in report.evicted) \
        or "nothing (it fit beside the resident models)"
    rows = [["from -> to", f"{report.from_model or '-'} -> {report.to_model}"],
            ["placed on", f"GPU {', '.join(map(str, report.gpus)) or '-'}"], ["evicted", evicted],
            *([["sleep", seconds(report.sleep_s)]] if report.slept else []),
            ["stop", seconds(report.stop_s)], ["VRAM released", vram_released(report)],
            *([["wake failed", report.wake_error]] if report.wake_error else []),
            *_death_rows(report), _load_row(report), ["total", seconds(report.total_s)],
            ["VRAM free before / after", f"{_gib_or_dash(report.vram_free_before)} / "
                                         f"{_gib_or_dash(report.vram_free_after)}"],
            *(["note", note] for note in report.notes)]
    return table("Switch", ["", ""], rows)


def _load_row(report) -> list[str]:
    if report.load_kind == "wake":
        return ["wake", f"woke {report.to_model} from level {report.wake_level} in {seconds(report.wake_s)}"]
    standby = " (a standby's interpreter: imports done ahead)" if report.launched_by == "standby" else ""
    return ["load to ready", seconds(report.load_s) + standby]


def _gib_or_dash(value: int | None) -> str:
    return "-" if value is None else gib(value)


def vram_released(report) -> str:
    """How long the evicted engines' VRAM took to come back, or the gateway's note on why
    that is not known."""
    return seconds(report.vram_release_s) if report.vram_release_s is not None else report.vram_note or "-"


def unloaded(report, model: str) -> str:
    """`unload`: what went to sleep, or what was stopped, and how long it took."""
    if report.slept:
        return f"{', '.join(report.slept)} asleep in {seconds(report.sleep_s)}"
    why = f" ({report.notes[0]})" if report.notes else ""
    return (f"unloaded {', '.join(report.evicted) or model}: stopped in {seconds(report.stop_s)}, "
            f"VRAM {vram_released(report)}{why}")


@dataclass
class StopResult:
    """`stop`: the gateway stopped (or, when none ran, the engine groups a dead one left)."""
    stopped: bool
    gateway_pid: int
    seconds: float
    engine_processes_left: list[int]
    leftovers_stopped: list[int] = field(default_factory=list)  # engine groups a dead gateway left
    forced: str | None = None  # SIGTERM | SIGKILL: what ended a gateway that did not stop itself


def stopped(result: StopResult) -> str:
    """`stop`: how long it took, or which engine processes outlived the gateway."""
    left = result.engine_processes_left
    if result.leftovers_stopped and not result.forced:  # no gateway ran: the engines a dead one left
        return f"engine processes are still alive: {left}" if left else \
            f"stopped in {result.seconds:.2f}s; no engine process left"
    return f"gateway stopped, but engine processes are still alive: {left}" if left else \
        f"gateway (pid {result.gateway_pid}) stopped in {result.seconds:.2f}s; no engine process left"

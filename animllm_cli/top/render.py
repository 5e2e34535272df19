"""A snapshot drawn for a terminal `width` columns wide (and, live, `height` rows high).

Every line is one line: cells are cut with an ellipsis, never folded, so a redraw each
second keeps its shape and fits the screen. Below NARROW columns the less important
columns go (GPU placement, VRAM per engine, the gateway's queue per engine, memory
bandwidth) rather than every cell shrinking to nothing. Text from the server (model
names, reasons) is never read as Rich markup: it goes in as plain `Text`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from animllm_cli.units import gib_figure

if TYPE_CHECKING:
    from animllm_cli.top.snapshot import EngineRow, Snapshot

NARROW = 70                 # columns: below this, tables drop their less important columns
SWITCHES_SHOWN = 5          # at most, newest first, fewer when the screen is short
STATE_STYLES = {"ready": "green", "dead": "bold red", "starting": "yellow", "waking": "yellow",
                "switching": "yellow", "draining": "yellow", "stopping": "yellow", "sleeping": "blue"}


def render(shot: Snapshot, width: int, height: int | None = None, *, live: bool = False) -> Any:
    """The whole view. `height`: the rows there are (live), so that the recent switches
    take only what is left; None (a snapshot printed once) shows SWITCHES_SHOWN."""
    from animllm_cli.output import stacked

    parts: list[Any] = [_title(shot, live), *_gateway_lines(shot), "", _gpus(shot, width)]
    used = len(parts) - 1 + _rows(parts[-1])
    if shot.gateway.reachable:
        engines = _engines(shot, width)
        # The phase tells a 40-second load from a hung one: a line under the table, so that
        # the table's columns keep their width.
        phases = [_line(f"{e.model} {e.state}: {e.phase}", style="yellow") for e in shot.engines
                  if e.phase and e.phase != e.state]
        parts += ["", engines, *phases]
        used += 1 + _rows(engines) + len(phases)
    room = SWITCHES_SHOWN if height is None else min(SWITCHES_SHOWN, height - used - 2)
    if shot.recent_switches and room > 0:
        parts += ["", _line("recent switches", style="bold")]
        parts += [_line(_switch(s)) for s in reversed(shot.recent_switches[-room:])]
    return stacked(*(_line("") if part == "" else part for part in parts))


def _rows(part: Any) -> int:
    """Lines a part takes: a table is its header and rows (nothing wraps); a line, one."""
    return 1 + part.row_count if hasattr(part, "row_count") else 1


def _line(text: str, style: str = "") -> Any:
    from rich.text import Text

    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def _title(shot: Snapshot, live: bool) -> Any:
    from rich.table import Table

    gateway = shot.gateway
    if gateway.reachable:
        where = f"{gateway.url}  pid {gateway.pid}  up {_duration(gateway.uptime_s)}"
    elif gateway.running:
        where = f"gateway not reachable at {gateway.url}"
    else:
        where = "gateway not running"
    clock = time.strftime("%H:%M:%S", time.localtime(shot.taken_at)) + ("  q quits" if live else "")
    grid = Table.grid(expand=True)
    grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    grid.add_column(no_wrap=True, justify="right", min_width=len(clock) + 2)  # the clock stays whole
    from rich.text import Text

    grid.add_row(Text("animllm top  ", style="bold").append(where, style="" if gateway.reachable else "yellow"),
                 Text(clock, style="dim"))
    return grid


def _gateway_lines(shot: Snapshot) -> list[Any]:
    gateway = shot.gateway
    if not gateway.reachable:
        lines = [_line(gateway.problem or "", style="yellow")] if gateway.running and gateway.problem else []
        return lines + ([_line(f"hint: {gateway.hint}", style="dim")] if gateway.hint else [])
    waiting = "".join(f"  {model} {queue.waiting} (oldest {queue.oldest_wait_s:.0f}s)"
                      for model, queue in sorted(shot.queues.items()))
    lines = [_line(f"queue {shot.queue_depth}  in flight {shot.in_flight}" + (f"  waiting:{waiting}" if waiting else ""))]
    clients = "  ".join(f"{name}: {queue.summary()}" for name, queue in sorted(shot.clients.items()))
    if clients:
        lines.append(_line(f"clients  {clients}"))
    if shot.busy:
        lines.append(_line(f"refusing requests: {shot.busy}", style="red"))
    return lines


def _table(columns: list[tuple[str, str]], rows: list[list[Any]], width: int) -> Any:
    """A borderless table with a bold header, (name, justify) per column. The first column
    (a name) takes what the others leave: figures are never cut while a name can be."""
    from rich.table import Table

    def cell_width(cell: Any) -> int:
        return len(cell.plain) if hasattr(cell, "plain") else len(str(cell))

    widths = [max([len(name), *(cell_width(row[i]) for row in rows)]) for i, (name, _) in enumerate(columns)]
    gaps = 2 * (len(columns) - 1)   # one space of padding each side of an inner edge
    widths[0] = max(4, min(widths[0], width - sum(widths[1:]) - gaps))
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold", expand=False)
    for (name, justify), column_width in zip(columns, widths):
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis",  # type: ignore[arg-type]
                         min_width=column_width, max_width=column_width)
    for row in rows:
        table.add_row(*row)
    return table


def _gpus(shot: Snapshot, width: int) -> Any:
    if not shot.gpus:
        return _line(f"GPUs: {shot.gpu_error or 'none'}", style="yellow")
    narrow = width < NARROW
    columns = [("name", "left"), ("GPU", "right"), ("VRAM GiB", "right"), ("use", "right")]
    rows = []
    for gpu in shot.gpus:
        cells = [_text(gpu.name.removeprefix("NVIDIA ")), str(gpu.index),
                 f"{gib_figure(gpu.used_bytes)}/{gib_figure(gpu.total_bytes)}", _percent(gpu.utilization_gpu_percent)]
        rows.append(cells if narrow else [*cells, _percent(gpu.utilization_memory_percent)])
    return _table(columns if narrow else [*columns, ("mem bw", "right")], rows, width)


def _engines(shot: Snapshot, width: int) -> Any:
    if not shot.engines and not shot.remotes:
        return _line("no engine loaded", style="dim")
    rows = []
    for engine in shot.engines:
        rows.append([_text(engine.model or "-"), _text(engine.state, STATE_STYLES.get(engine.state, "")),
                     ",".join(map(str, engine.gpus)) or "-", _gib(engine.vram_bytes), _run_wait(engine),
                     str(engine.waiting), _kv(engine.kv_cache_usage), _rate(engine.generation_tokens_per_s)])
    for remote in shot.remotes:
        healthy = sum(upstream.healthy is True for upstream in remote.upstreams)
        rows.append([_text(remote.model), _text(f"remote {healthy}/{len(remote.upstreams)}"), "-", "-",
                     f"{remote.in_flight}/-", str(remote.waiting), "-", "-"])
    columns = [("model", "left"), ("state", "left"), ("GPU", "left"), ("VRAM", "right"), ("run/wait", "right"),
               ("queued", "right"), ("KV", "right"), ("tok/s", "right")]
    if width < NARROW:
        return _table(_pick(columns), [_pick(row) for row in rows], width)
    return _table(columns, rows, width)


def _pick(cells: list[Any]) -> list[Any]:
    """The narrow table's cells: model, state, run/wait, KV, tok/s."""
    return [cells[i] for i in (0, 1, 4, 6, 7)]


def _text(value: str, style: str = "") -> Any:
    from rich.text import Text

    return Text(value, style=style)


def _run_wait(engine: EngineRow) -> str:
    if engine.requests_running is None and engine.requests_waiting is None:
        return "-"
    return f"{_count(engine.requests_running)}/{_count(engine.requests_waiting)}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _kv(usage: float | None) -> Any:
    return "-" if usage is None else _text(f"{usage:.0%}", "red" if usage >= 0.9 else "")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _percent(value: int | None) -> str:
    return "-" if value is None else f"{value}%"


def _gib(value: int | None) -> str:
    return "-" if value is None else gib_figure(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _switch(report: Any) -> str:
    """One switch or unload in a line: when, what, how it went, how long, why."""
    when = time.strftime("%H:%M:%S", time.localtime(report.finished_at)) if report.finished_at else "--:--:--"
    if report.to_model is None:
        what = f"unloaded {', '.join(report.evicted) or report.from_model or '-'}"
    else:
        what = f"{report.from_model or '-'} -> {report.to_model}"
    took = f" {report.total_s:.1f}s" if report.total_s is not None else ""
    died = f": {report.death.summary()}" if report.death else ""  # a restart: how the engine it replaced died
    why = f" ({report.reason}{died})" if report.reason else ""
    error = f": {report.error}" if report.error else ""
    return f"{when} {what} {report.outcome}{took}{why}{error}"

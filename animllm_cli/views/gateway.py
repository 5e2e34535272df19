"""What the gateway's answers look like in a terminal: the tables of `status`, `ps` and
`switch`, for the commands and the demo alike. Built from the wire schema only."""

from __future__ import annotations


def gib(value) -> str:
    from animllm_cli.units import GIB

    return "-" if value is None else f"{value / GIB:.1f} GiB"


def engines_table(engines, remotes=()):
    """`ps`: one row per engine, narrow enough for 80 columns. VRAM as NVML measures it,
    or the plan's estimate (marked ~) until it has. A model served elsewhere is a row with
    its requests only, its URLs below the table."""
    from animllm_cli.output import plain, table
    from animllm_cli.units import GIB

    def gib(value, planned=None) -> str:
        if value is not None:
            return f"{value / GIB:.1f}"
        return f"~{planned / GIB:.1f}" if planned else "-"

    def unload(engine) -> str:
        if engine.pinned:
            return "pinned"
        if engine.keep_alive_s is None or engine.keep_alive_s < 0:
            return "never"
        return f"in {engine.unload_in_s:.0f}s" if engine.unload_in_s is not None else f"{engine.keep_alive_s:g}s idle"

    rows = [[plain(e.model or "-"), plain(e.state), ",".join(map(str, e.gpus)) or "-",
             "-" if e.share is None else f"{e.share:g}", gib(e.vram_bytes, e.vram_planned_bytes),
             gib(e.vram_peak_bytes), f"{e.in_flight}/{e.waiting}",
             "-" if e.idle_s is None else f"{e.idle_s:.0f}s", unload(e)] for e in engines]
    rows += [[plain(r.model), "remote", "-", "-", "-", "-", f"{r.in_flight}/{r.waiting}", "-", "-"] for r in remotes]
    title = "Resident and remote models" if remotes else "Resident models"
    shown = table(f"{title} (VRAM GiB: NVML per process; ~ the plan's estimate)",
                  ["model", "state", "GPU", "share", "VRAM", "peak", "run/wait", "idle", "unload"], rows,
                  no_wrap=("model", "state", "VRAM", "unload"))
    asleep = [f"{e.model}: {sleeping(e)}" for e in engines if e.sleep_level]
    below = asleep + [line for remote in remotes for line in served_at(remote)]
    if below:  # below the table: a state cell this long would not fit 80 columns
        shown.caption, shown.caption_justify = "\n".join(below), "left"
    return shown


def served_at(remote) -> list[str]:
    """A remote model's URLs, one line each: healthy, not checked yet, or out and why
    (the missing key once, not on every URL it takes out)."""
    from animllm_cli.output import plain

    lines = [f"{remote.model}: {remote.key_problem}"] if remote.key_problem else []
    for upstream in remote.upstreams:
        if upstream.healthy is None:
            health = "not checked yet"
        elif upstream.healthy:
            health = "healthy"
        else:
            health = "out" if upstream.problem in (None, remote.key_problem) else f"out: {upstream.problem}"
        lines.append(f"{remote.model}: {upstream.url} {health}")
    return [plain(line) for line in lines]  # URLs and problems are the server's text, never markup


def sleeping(engine) -> str:
    host = f", weights in host RAM: {gib(engine.host_bytes)}" if engine.host_bytes else \
        ", weights dropped" if engine.sleep_level == 2 else ""
    return f"sleeping (level {engine.sleep_level}{host})"

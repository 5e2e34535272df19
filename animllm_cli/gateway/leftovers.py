"""What a gateway that died without its cleanup left running: the engine groups its state
file names. Each engine has a watchdog that ends it once the gateway is gone, so this is
the second line: for a watchdog that died too (the OOM killer, a `kill -9` of both), or a
gateway from before watchdogs. `serve` and `stop` call `clean()`; `status` names them
(`left_running()`).

Only processes provably ours are stopped: the group's leader is alive, leads the recorded
group, was created when the recorded one was (a pid the kernel reused was created later),
and runs the recorded engine module."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

from animllm_cli.engine import processes
from animllm_cli.runfile import EngineGroup, GatewayState, read_dead_state, remove_state

# psutil derives creation times from the boot time, which the kernel reports to the
# second and which clock adjustments can move: a match within this is the same process.
SAME_PROCESS_S = 1.0


@dataclass
class Leftover:
    model: str
    pgid: int
    gateway_pid: int   # the dead gateway that left it
    forced: bool       # SIGKILL was needed after the grace period
    left: list[int]    # pids still alive afterwards (should be empty)

    def describe(self) -> str:
        return (f"the engine for '{self.model}' (process group {self.pgid}) that a dead gateway "
                f"(pid {self.gateway_pid}) left running")


def is_ours(group: EngineGroup) -> bool:
    try:
        leader = psutil.Process(group.pgid)
        return (leader.status() != psutil.STATUS_ZOMBIE
                and os.getpgid(leader.pid) == group.pgid
                and group.created_at is not None
                and abs(leader.create_time() - group.created_at) <= SAME_PROCESS_S
                and group.module in leader.cmdline())
    except (psutil.Error, OSError):
        return False


@dataclass
class LeftRunning:
    """`status` with no gateway: the engines a dead one left, which `stop` ends."""
    dead_gateway_pid: int
    engines: list[tuple[EngineGroup, list[int]]]   # each group, and its processes

    def message(self) -> str:
        named = ", ".join(f"'{group.model}' ({'pid' if len(pids) == 1 else 'pids'} {', '.join(map(str, pids))})"
                          for group, pids in self.engines)
        return f"no gateway is running, but a dead gateway (pid {self.dead_gateway_pid}) left engines running: {named}"

    def to_json(self) -> dict:
        return {"running": False, "dead_gateway_pid": self.dead_gateway_pid,
                "leftover_engines": [{"model": group.model, "process_group": group.pgid, "pids": pids}
                                     for group, pids in self.engines]}


def ours_running(dead: GatewayState) -> list[EngineGroup]:
    """The engine groups the dead gateway's state file names that still run and are ours."""
    return [group for group in dead.engines if is_ours(group)]


def left_running() -> LeftRunning | None:
    """What a dead gateway left running, without stopping it; None when nothing of ours runs."""
    dead = read_dead_state()
    groups = ours_running(dead) if dead else []
    if not groups:
        return None
    return LeftRunning(dead.pid, [(group, sorted(processes.group_members(group.pgid))) for group in groups])


def clean(grace_s: float) -> list[Leftover]:
    """Stop the engines a dead gateway left (SIGTERM to each group, SIGKILL after
    `grace_s`), then forget its state file. Empty when there was nothing of ours."""
    dead = read_dead_state()
    if dead is None:
        return []
    stopped = []
    for group in ours_running(dead):
        forced, left = processes.end_group(group.pgid, {}, grace_s)
        stopped.append(Leftover(group.model, group.pgid, dead.pid, forced, sorted(left)))
    if not any(item.left for item in stopped):  # else the record stays, for another try
        remove_state(dead.pid)
    return stopped

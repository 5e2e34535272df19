"""Find and end every process of an engine: by process group (vLLM's API server,
EngineCore, workers and the multiprocessing resource tracker all stay in the launcher's
group) and by the processes seen in its tree (in case one ever leaves the group).

Known processes are kept as psutil.Process objects: psutil checks a pid's creation time
before signalling it, so a pid the kernel has since reused is never hit."""

from __future__ import annotations

import os
import signal
import time

import psutil


def group_members(pgid: int) -> set[int]:
    members = set()
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.add(proc.pid)
        except (ProcessLookupError, psutil.Error, PermissionError):
            continue
    return members


def tree(pid: int) -> dict[int, psutil.Process]:
    try:
        root = psutil.Process(pid)
        return {p.pid: p for p in [root, *root.children(recursive=True)]}
    except psutil.Error:
        return {}


def names(found: dict[int, psutil.Process]) -> dict[int, str]:
    """Each process's name now ("VLLM::EngineCore"), for those still running: psutil keeps
    no name of a process that is gone."""
    named = {}
    for pid, proc in found.items():
        try:
            named[pid] = proc.name()
        except psutil.Error:
            continue
    return named


def living(known: dict[int, psutil.Process]) -> set[int]:
    left = set()
    for pid, proc in known.items():
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.add(pid)
        except psutil.Error:
            continue
    return left


def signal_all(pgid: int, known: dict[int, psutil.Process], sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in known.values():
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


def wait_gone(pgid: int, known: dict[int, psutil.Process], timeout_s: float) -> set[int]:
    """Poll until the group and the known processes are gone; return whatever is left."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = group_members(pgid) | living(known)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def end_group(pgid: int, known: dict[int, psutil.Process], grace_s: float) -> tuple[bool, set[int]]:
    """SIGTERM the group and the known processes, SIGKILL whatever is left after `grace_s`;
    return whether SIGKILL was needed, and what is still alive after it."""
    signal_all(pgid, known, signal.SIGTERM)
    left = wait_gone(pgid, known, grace_s)
    if not left:
        return False, set()
    signal_all(pgid, known, signal.SIGKILL)
    return True, wait_gone(pgid, known, 5.0)

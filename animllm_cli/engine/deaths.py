"""How an engine died after ready, said so that a user can act on it (wire.EngineDeath): the
signal that ended its API server or the code it exited with, its other processes that were
already gone (vLLM's EngineCore, say), and the line of its log since ready that names a
known failure (an out-of-memory, say)."""

from __future__ import annotations

import signal
import time

from animllm_cli.engine import diagnosis
from animllm_cli.wire import DeathKind, EngineDeath


def exit_cause(status: int) -> tuple[DeathKind, str]:
    """An API server that exited: killed by a signal (a negative status) or on its own."""
    if status < 0:
        return "signal", f"the engine process was killed by {signal_name(-status)}"
    return "exit", f"the engine process exited with code {status}"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def described(kind: DeathKind, cause: str, *, status: int | None, gone: list[str], log: list[str]) -> EngineDeath:
    """The death as the wire says it. `status`: the API server's exit status, if it exited;
    `gone`: its other processes already gone; `log`: its log's lines since ready. The kind
    names the first failure: a death whose log names an out-of-memory is of that kind,
    whatever ended the process; an API server that exited once a process it ran with was
    gone (vLLM's, when its EngineCore died) is of kind process-gone."""
    found = diagnosis.failure_line(log)
    if found and found[0] == "out-of-memory":
        kind = "out-of-memory"
    elif gone and kind == "exit":
        kind = "process-gone"
    return EngineDeath(kind=kind, cause=cause,
                       signal=signal_name(-status) if status is not None and status < 0 else None,
                       exit_code=status if status is not None and status >= 0 else None,
                       gone=gone, log_line=found[1] if found else None, at=time.time())

"""One engine of the pool, and its one state.

A resident is in exactly one ResidentState, changed only by `Resident._move`, which allows
only the transitions in ALLOWED (llama-swap keeps one guarded state per process the same
way: proxy/process.go, swapState). Its sleep level, what NVML measured of it and the host
RAM it holds are data beside the state.

Every transition runs on the gateway's event loop, so no lock guards the state. An
engine's death is seen on a thread of its supervisor (engine/supervisor.py, `on_dead`): its
watcher's, or that of the check a failed request asked for. The pool hands it to the loop,
where `died()` makes the transition, so the state keeps one writer on one thread. For the
turn of the loop in between the resident still says ready: a request sent to it then fails
as one sent a moment before the death would. A dead resident's model is restarted by the
next switch to it (a switch of reason `restart`).

A transition the table does not allow raises TransitionError. It is a bug in the pool, whose
bookkeeping would then disagree with its engines (room counted for a stopped engine,
requests routed to a sleeping one): raising fails the switch that tried it, with the bug
named in its report, where a log line would let the pool go on with a wrong picture. The
races that are legitimate never reach the table: a death against a stop, and two stops at
once, are settled by the methods that meet them (`died`, `leave`, `gone` look first); a
wake that a death or a shutdown overtook is left as they left it (the pool looks first).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable

from animllm_cli.engine.sleep import ASLEEP_ESTIMATE_BYTES
from animllm_cli.engine.supervisor import Engine
from animllm_cli.engine.supervisor import State as EngineLifecycle
from animllm_cli.gateway.admission import engine_bytes
from animllm_cli.gpu import nvml
from animllm_cli.gpu.planner import Share

log = logging.getLogger(__name__)


class ResidentState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    SLEEPING = "sleeping"
    WAKING = "waking"
    STOPPING = "stopping"
    DEAD = "dead"
    STOPPED = "stopped"


S = ResidentState
ALLOWED: dict[ResidentState, frozenset[ResidentState]] = {
    S.STARTING: frozenset({S.READY, S.STOPPING, S.STOPPED}),  # stopped: a failed start stops what it launched
    S.READY: frozenset({S.SLEEPING, S.STOPPING, S.DEAD}),
    S.SLEEPING: frozenset({S.WAKING, S.STOPPING, S.DEAD}),
    S.WAKING: frozenset({S.READY, S.STOPPING, S.DEAD}),
    S.DEAD: frozenset({S.STOPPING}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.STOPPED: frozenset(),
}
CAN_DIE = frozenset({S.READY, S.SLEEPING, S.WAKING})  # the supervisor watches an engine from ready on
HOLDS_MEMORY = frozenset({S.STARTING, S.READY, S.SLEEPING, S.WAKING, S.STOPPING})


class TransitionError(RuntimeError):
    """A transition the table forbids: a bug in the pool."""


@dataclass(eq=False)
class Resident:
    """One engine of the pool, from its launch until it is stopped."""
    model: str
    engine: Engine
    gpus: tuple[int, ...]
    share: Share
    planned_bytes: dict[int, int]              # GPU -> the plan's footprint
    measured_bytes: dict[int, int] = field(default_factory=dict)  # GPU -> NVML's, once ready
    peak_bytes: dict[int, int] = field(default_factory=dict)      # GPU -> the most NVML showed
    # GPU -> what NVML's latest reading (the one the pool's report holds) shows its processes
    # hold, 0 included: dead, what they leave until its stop, never more than that report counts.
    seen_bytes: dict[int, int] = field(default_factory=dict)
    ready_bytes: dict[int, int] | None = None  # GPU -> what it held when it became ready (admission)
    loaded_at: float | None = None             # wall clock, when it became ready
    sleep_mode: bool = False                   # launched able to sleep
    sleep_level: int | None = None             # from the moment it is sent to sleep until it is awake again
    asleep_since: float | None = None          # monotonic
    asleep_bytes: dict[int, int] = field(default_factory=dict)  # GPU -> NVML's, while asleep
    host_bytes: int = 0                        # its weights in host RAM (level 1)
    host_seen: int = 0                         # how much of that host RAM's `available` showed gone
    host_kept: int = 0                         # host RAM it kept after a wake (vllm#16663)
    keep_alive_s: float | None = None          # a client's keep_alive for it (Ollama's API), in place of the config's
    _state: ResidentState = field(default=S.STARTING, init=False, repr=False)

    @property
    def state(self) -> ResidentState:
        return self._state

    def _move(self, to: ResidentState) -> None:
        """The one place the state changes."""
        if to not in ALLOWED[self._state]:
            raise TransitionError(f"the pool moved '{self.model}' from {self._state.value} to {to.value}, "
                                  f"which is not a transition of an engine")
        log.debug("%s: %s -> %s", self.model, self._state.value, to.value)
        self._state = to

    # ------------------------------------------------------------------ transitions
    def ready(self) -> None:
        """Its engine answered ready after a start. A death its watcher saw before this
        (the loop stalled between the start and here: `died()` passed over a starting
        resident) is taken now, or the pool would route to a dead engine for good."""
        self._move(S.READY)
        if self.engine.state is EngineLifecycle.DEAD:
            self.died()

    def fall_asleep(self, level: int) -> None:
        """Sent to sleep: from here on it holds what a sleeper keeps (measured afresh)."""
        self._move(S.SLEEPING)
        self.sleep_level, self.asleep_since, self.asleep_bytes = level, time.monotonic(), {}

    def wake(self) -> None:
        self._move(S.WAKING)

    def woke(self) -> None:
        """Awake again. After a level-1 wake vLLM keeps the weights' host buffer
        (vllm#16663): that host RAM stays taken, and its next sleep takes no more."""
        self._move(S.READY)  # first: a refused transition changes nothing
        if self.sleep_level == 1:
            self.host_kept = max(self.host_kept, self.host_bytes)
        self.sleep_level, self.asleep_since, self.asleep_bytes = None, None, {}
        self.host_bytes = self.host_seen = 0

    def died(self) -> bool:
        """Its supervisor saw the engine die (on the loop). False: it was leaving already,
        and the stop under way wins."""
        if self._state not in CAN_DIE:
            return False
        self._move(S.DEAD)
        return True

    def leave(self) -> None:
        """Its stop begins; a second stop of the same resident (a shutdown during a switch) changes nothing."""
        if self._state is not S.STOPPING:
            self._move(S.STOPPING)

    def gone(self) -> None:
        """Its engine is stopped; the second of two stops at once finds it so."""
        if self._state is not S.STOPPED:
            self._move(S.STOPPED)

    # ------------------------------------------------------------------ memory
    def bytes_on(self, gpu: int) -> int:
        """What it holds on `gpu` awake: measured once ready, the plan's estimate before."""
        return self.measured_bytes.get(gpu) or self.planned_bytes.get(gpu, 0)

    def asleep_on(self, gpu: int) -> int:
        """What it holds on `gpu` asleep (a CUDA context and buffers): measured, else an estimate."""
        return self.asleep_bytes.get(gpu) or (ASLEEP_ESTIMATE_BYTES if gpu in self.gpus else 0)

    def holding(self, gpu: int) -> int:
        return self.asleep_on(gpu) if self.sleep_level and self._state is not S.WAKING else self.bytes_on(gpu)

    def holds(self) -> bool:
        return self._state in HOLDS_MEMORY

    def left_on(self, gpu: int) -> int:
        """Dead: what its processes still hold on `gpu` until its stop (an orphaned EngineCore,
        say), as NVML's latest report shows them: its footprint if that was read while it ran,
        0 if read once they were gone (not its footprint of before: the report's used memory
        no longer holds it); alive: nothing left over."""
        return self.seen_bytes.get(gpu, 0) if self._state is S.DEAD else 0

    def vram_now(self) -> dict[int, int]:
        """GPU -> what NVML last showed it hold (asleep: what it keeps; dead: what it leaves)."""
        if self._state is S.DEAD:
            return self.seen_bytes
        return self.asleep_bytes if self.sleep_level else self.measured_bytes

    def measure(self, gpus: list[nvml.Gpu]) -> set[int]:
        """Take its footprint from NVML's reading (blocking: its processes are listed): awake,
        what it holds and the most it ever held; asleep, what it keeps; dead, what is left.
        Returns the processes it judged the reading by, every one its engine has had (in any
        state: admission counts a starting engine's memory as its own too)."""
        pids = self.engine.pids_ever()
        if self._state not in (S.READY, S.SLEEPING, S.DEAD):
            return pids
        self.seen_bytes = {gpu.index: engine_bytes(gpu, pids) for gpu in gpus}
        if self._state is S.DEAD:
            return pids
        for gpu in gpus:
            held = self.seen_bytes[gpu.index]
            if held and self._state is S.SLEEPING:
                self.asleep_bytes[gpu.index] = held
            elif held:
                self.measured_bytes[gpu.index] = held
                self.peak_bytes[gpu.index] = max(held, self.peak_bytes.get(gpu.index, 0))
        return pids

    def reserve(self, gpus: list[nvml.Gpu], free_before: int | None, free_after: int | None) -> None:
        """What it holds at ready, for admission. Where the driver names no process of it
        (containers see host pids, Windows/WSL show no per-process memory), what its start
        took from free memory on its first GPU stands in."""
        pids = self.engine.pids_ever()
        self.ready_bytes = {g.index: engine_bytes(g, pids) for g in gpus}
        if free_before is not None and free_after is not None and not any(self.ready_bytes.values()):
            self.ready_bytes[self.gpus[0]] = max(0, free_before - free_after)


def sleepers(residents: Iterable[Resident]) -> list[str]:
    """The models asleep, the longest asleep first."""
    asleep = [r for r in residents if r.state is S.SLEEPING]
    return [r.model for r in sorted(asleep, key=lambda r: r.asleep_since or 0.0)]


def reserved(residents: Iterable[Resident]) -> dict[int, int] | None:
    """GPU -> what the ready engines held when they became ready, and what the sleepers
    keep; None while a ready one is unmeasured."""
    total: dict[int, int] = {}
    for resident in residents:
        if resident.state is S.SLEEPING:  # what it keeps asleep is its reservation now
            for gpu in resident.gpus:
                total[gpu] = total.get(gpu, 0) + resident.asleep_on(gpu)
        if resident.state is not S.READY:
            continue
        if resident.ready_bytes is None:
            return None
        for gpu, held in resident.ready_bytes.items():
            total[gpu] = total.get(gpu, 0) + held
    return total

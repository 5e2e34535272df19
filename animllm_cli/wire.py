"""The admin API's wire schema: one typed form for each answer, written by the gateway and
read by the commands, and the vocabularies of engine states, switch reasons and choices,
each spelt once here. Their JSON is the schema docs/json.md documents (`status --json`,
`switch --json`). A leaf: pydantic only."""

from __future__ import annotations

from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from animllm_cli.errors import AnimllmError

# ---------------------------------------------------------------------------- vocabularies
# An engine's state as `status`/`ps` show it. The pool's own states (gateway/resident.py)
# are starting, ready, sleeping, waking, stopping, dead, stopped; the gateway adds none (no
# engine), draining (ready, but to be evicted: it starts nothing new) and switching (the
# single-slot view while a switch runs).
EngineState = Literal["none", "starting", "ready", "draining", "sleeping", "waking", "switching", "stopping",
                      "dead", "stopped"]

# Why a switch happened (the scheduler's Decision.reason, a label of animllm_switches_total).
SwitchReason = Literal["cold", "restart", "beside", "idle", "max_wait", "admin", "arrival_order", "keep_alive",
                       "unload", "sleep"]
SWITCH_REASONS: dict[str, str] = {
    "cold": "nothing was loaded",
    "restart": "its engine died",
    "beside": "it fit beside the resident models",
    "idle": "the evicted model had no work left",
    "max_wait": "a request waited scheduler.max_wait_s",
    "admin": "animllm switch",
    "arrival_order": "strict arrival order, scheduler.policy fifo",
    "keep_alive": "idle for its keep_alive",
    "unload": "animllm unload",
    "sleep": "animllm unload --sleep",
}

# Why this model (Decision.chosen_by).
ChosenBy = Literal["only", "oldest", "priority", "more_work", "overdue", "explicit", "arrival_order", "idle"]
SwitchOutcome = Literal["ok", "failed", "already loaded", "remote"]
LoadKind = Literal["wake", "cold"]
# How an engine was found dead after ready (EngineDeath.kind, a label of animllm_engine_deaths_total):
# its API server killed by a signal, or exited; its log names an out-of-memory failure; a process
# it ran with is gone (vLLM's EngineCore), its API server running still or ended over it; /health
# failed (answered an error, or failed engine.health_failures times); its port no longer its own.
DeathKind = Literal["signal", "exit", "out-of-memory", "process-gone", "unhealthy", "unreachable"]

assert set(SWITCH_REASONS) == set(get_args(SwitchReason)), "every switch reason has its words"


class Report(BaseModel):
    def to_json(self) -> dict:
        return self.model_dump(mode="json")


R = TypeVar("R", bound=Report)


def read(kind: type[R], data: Any, sender: str) -> R:
    """`data` as `kind`. An answer outside this schema (a state or reason this release does
    not know, from a gateway of another animllm version) is a clean error, not a traceback."""
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the answer"
        raise AnimllmError(f"{sender} answered in a form this animllm does not read: {where}: {first['msg']}",
                           hint="the gateway runs another animllm version: run the same version on both sides "
                                "(`animllm --version`)") from None


class EngineDeath(Report):
    """How an engine died after ready, as its supervisor found it: what a restart carries."""
    kind: DeathKind
    cause: str                        # in words: "the engine process was killed by SIGKILL"
    signal: str | None = None         # the signal that ended its API server
    exit_code: int | None = None      # the code its API server exited with
    gone: list[str] = []              # its other processes already gone then ("VLLM::EngineCore (pid 4251)")
    log_line: str | None = None       # the line of its log since ready that names a known failure
    at: float | None = None           # wall clock

    def summary(self) -> str:
        """In one line: the cause, the processes gone with it, what its log says."""
        gone = [f"already gone: {', '.join(self.gone)}"] if self.gone else []
        said = [f"its log: {self.log_line}"] if self.log_line else []
        return "; ".join([self.cause, *gone, *said])


class SwitchReport(Report):
    from_model: str | None            # the first model evicted, if any
    to_model: str | None              # None: an unload
    outcome: SwitchOutcome
    evicted: list[str] = []           # every model evicted to make room (stopped, or asleep: see slept), LRU first
    gpus: list[int] = []              # where the model was placed
    reason: SwitchReason | None = None
    chosen_by: ChosenBy | None = None
    stop_s: float | None = None
    vram_release_s: float | None = None
    load_s: float | None = None
    total_s: float | None = None
    vram_free_before: int | None = None
    vram_free_after: int | None = None
    vram_note: str | None = None
    error: str | None = None
    finished_at: float | None = None  # wall clock
    # vLLM sleep mode (engine/sleep.py): the evicted that went to sleep rather than stop,
    # and whether the model woke (load_kind "wake") or started ("cold").
    slept: list[str] = []
    sleep_s: float | None = None      # the longest of their sleeps
    load_kind: LoadKind | None = None  # None: nothing loaded
    launched_by: Literal["fresh", "standby"] | None = None  # a cold load's interpreter (engine/standby.py)
    wake_s: float | None = None
    wake_level: int | None = None
    wake_error: str | None = None     # a wake that failed (then it started cold), with its diagnosis
    notes: list[str] = []             # why a model was stopped rather than sent to sleep; a download before the start
    death: EngineDeath | None = None  # reason "restart": how the engine it replaced died


class EngineStatus(Report):
    model: str | None
    state: EngineState
    switching_to: str | None = None
    switching: list[str] = []         # every model a switch in progress loads, oldest first (switching_to: the first)
    phase: str | None = None
    engine_pid: int | None = None
    engine_url: str | None = None
    death_reason: str | None = None
    log_path: str | None = None
    loaded_since: float | None = None
    last_switch: SwitchReport | None = None
    # The pool's view of one resident engine (`animllm ps`):
    gpus: list[int] = []
    share: float | None = None        # the gpu_memory_utilization it runs with
    vram_bytes: int | None = None     # what NVML shows its processes hold now (None: not measured)
    vram_planned_bytes: int | None = None  # the plan's estimate
    vram_peak_bytes: int | None = None     # the most NVML showed it hold since it became ready
    in_flight: int = 0
    waiting: int = 0
    idle_s: float | None = None       # how long it has had nothing running or waiting
    pinned: bool = False
    keep_alive_s: float | None = None
    unload_in_s: float | None = None  # when keep_alive unloads it, if it stays idle
    can_sleep: bool = False           # launched with vLLM's sleep mode (evicting it may put it to sleep)
    sleep_level: int | None = None    # asleep at this level (state "sleeping")
    host_bytes: int | None = None     # its weights in host RAM while asleep at level 1


class GpuMemory(Report):
    index: int
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int


class VramStatus(Report):
    gpus: list[GpuMemory] = []
    error: str | None = None


class GatewayProcess(Report):
    pid: int
    uptime_s: float
    # What it runs on (animllm_cli/server_stack.py), with versions: "uvloop 0.21.0" or
    # "asyncio (Python 3.11.9)", "httptools 0.6.4" or "h11 0.16.0"; None: not said (an older
    # gateway; the HTTP parser of one not started by `serve`).
    event_loop: str | None = None
    http_parser: str | None = None


class ModelQueue(Report):
    waiting: int
    oldest_wait_s: float              # how long the oldest of them has waited


class ClientQueue(Report):
    """One client's requests (`clients:`; "server" for the server's key, "anonymous" without one)."""
    waiting: int
    running: int

    def summary(self) -> str:
        return f"{self.running} running, {self.waiting} waiting"


class SleepModeStatus(Report):
    available: bool
    reason: str                       # why (not): the engine's vLLM build, its version, the GPU
    host_available_bytes: int | None = None  # host RAM free now (level-1 sleepers take their weights' size)


class UpstreamStatus(Report):
    url: str
    healthy: bool | None              # None: not checked yet
    problem: str | None = None        # why it is out of rotation
    outstanding: int = 0              # requests sent to it and not answered in full yet
    sent: int = 0
    checked_at: float | None = None   # wall clock of the last health check


class RemoteStatus(Report):
    """A model served elsewhere (`upstream`): never loaded or evicted here."""
    model: str
    served_name: str                  # its name on the upstream servers
    key_env: str | None = None        # the variable holding their key (never the key)
    key_problem: str | None = None    # that variable is not set
    in_flight: int = 0
    waiting: int = 0
    upstreams: list[UpstreamStatus] = []


class StatusReport(Report):
    schema_version: int = 1
    url: str | None = None            # filled in by the client from the state file
    gateway: GatewayProcess
    engine: EngineStatus              # the model loaded last (or being loaded): the single-slot view
    engines: list[EngineStatus] = []  # every engine of the pool (`animllm ps`)
    queue_depth: int
    in_flight: int
    queues: dict[str, ModelQueue] = {}  # model -> its waiting requests
    clients: dict[str, ClientQueue] = {}  # client -> its requests waiting and running (those with any)
    backoff: dict[str, float] = {}    # model -> seconds left
    busy: str | None = None           # why requests are refused, or None
    vram: VramStatus
    sleep_mode: SleepModeStatus | None = None  # whether evicted engines can sleep here (vLLM sleep mode)
    remotes: list[RemoteStatus] = []  # the models served elsewhere, and their URLs' health
    recent_switches: list[SwitchReport] = []  # the latest switches and unloads, oldest first (`animllm top`)


class SwitchHistory(Report):
    """`GET /admin/switches[?since=T]`: the switches and unloads the gateway kept (oldest
    first), those finished after wall-clock time T if given (`bench-mix`)."""
    recorded: int                     # since the gateway started; more than capacity: the oldest fell out
    capacity: int                     # how many the gateway keeps
    switches: list[SwitchReport] = []


class StopAnswer(Report):
    stopping: bool
    engine_pids: list[int] = []


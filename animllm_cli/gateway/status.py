"""What `/admin/status`, `/health` and `animllm ps` show, assembled on the event loop (the
scheduler's lists are the loop's): each engine of the pool with the scheduler's counts,
the models served elsewhere, the queues, and the single-slot view of scripts.

Two of the states shown are the gateway's view rather than an engine's (gateway/resident.py
has the engines' own): draining, a ready engine that starts nothing new because it is to be
unloaded or evicted; and switching, the single-slot view while a switch runs.
"""

from __future__ import annotations

import asyncio
import os
import time

from animllm_cli import server_stack
from animllm_cli.gateway.app import Gateway
from animllm_cli.gateway.resident import Resident, ResidentState
from animllm_cli.gpu import nvml
from animllm_cli.wire import (ClientQueue, EngineState, EngineStatus, GatewayProcess, GpuMemory, ModelQueue, RemoteStatus,
                              StatusReport, VramStatus)

RECENT_SWITCHES = 10                  # /admin/status's recent_switches (the pool keeps more)


def engine_status(gw: Gateway, resident: Resident, queues: dict[str, ModelQueue]) -> EngineStatus:
    """One engine's part of `/admin/status` and `animllm ps`."""
    pool, scheduler, engine, model = gw.pool, gw.scheduler, resident.engine, resident.model
    keep, pinned, idle_s = pool.keep_alive(model), pool.pinned(model), _rounded(scheduler.idle_for(model))
    ready = resident.state is ResidentState.READY
    expires = keep >= 0 and not pinned and idle_s is not None and ready
    state: EngineState = "draining" if ready and model in scheduler.draining else resident.state.value
    return EngineStatus(
        model=model, state=state, phase=engine.phase, engine_pid=engine.pid,
        engine_url=engine.base_url, death_reason=engine.death_reason, log_path=str(engine.log_path),
        loaded_since=resident.loaded_at if ready else None,
        gpus=list(resident.gpus), share=resident.share.utilization or None,
        vram_bytes=sum(resident.vram_now().values()) or None,
        vram_planned_bytes=sum(resident.planned_bytes.values()) or None,
        vram_peak_bytes=sum(resident.peak_bytes.values()) or None,
        in_flight=scheduler.running.get(model, 0), waiting=queues[model].waiting if model in queues else 0,
        idle_s=idle_s, pinned=pinned, keep_alive_s=keep,
        unload_in_s=round(max(0.0, keep - (idle_s or 0)), 1) if expires else None,
        sleep_level=resident.sleep_level, host_bytes=resident.host_bytes or None, can_sleep=resident.sleep_mode)


def engine_statuses(gw: Gateway) -> list[EngineStatus]:
    """Every engine of the pool, as `animllm ps` shows it."""
    queues = gw.scheduler.queues()
    return [engine_status(gw, resident, queues) for resident in list(gw.pool.residents.values())]


def remote_statuses(gw: Gateway) -> list[RemoteStatus]:
    """Every model served elsewhere, with each URL's health."""
    queues = gw.scheduler.queues()
    return [remote.status(running=gw.scheduler.running.get(name, 0),
                          waiting=queues[name].waiting if name in queues else 0)
            for name, remote in gw.upstreams.models.items()]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def newest_engine(gw: Gateway, statuses: list[EngineStatus] | None = None) -> EngineStatus:
    """The single-slot view: the model loaded last (or being loaded, its download first),
    and the last switch; where switches run at once, `switching_to` is the oldest and
    `switching` names them all."""
    switching_to = gw.scheduler.switching_to
    download = gw.pool.downloads.get(switching_to or "")
    newest = next((s for s in statuses or engine_statuses(gw) if s.model == gw.pool.newest), None)
    if download is not None:  # no engine yet: the switch's phase is its download's
        newest = EngineStatus(model=switching_to, state="switching", phase=download.phase)
    elif newest is None:
        newest = EngineStatus(model=None, state="none")
    return newest.model_copy(update={"switching_to": switching_to, "switching": gw.scheduler.switching,
                                     "last_switch": gw.pool.last_switch,
                                     "state": "switching" if switching_to else newest.state})


def gateway_process(gw: Gateway) -> GatewayProcess:
    """The gateway itself: its pid, uptime, and the event loop it runs on (read off the running
    loop: a host may bring its own) and the HTTP parser uvicorn was told (gateway/server.py)."""
    http = gw.http_parser
    return GatewayProcess(pid=os.getpid(), uptime_s=round(time.time() - gw.started_at, 1),
                          event_loop=server_stack.loop_text(server_stack.loop_name(asyncio.get_running_loop())),
                          http_parser=server_stack.http_text(http) if http else None)


def status_report(gw: Gateway, report: nvml.GpuReport) -> StatusReport:
    """`/admin/status`; `report` read beforehand (NVML blocks: not on the loop)."""
    now = time.monotonic()
    engines = engine_statuses(gw)
    return StatusReport(
        gateway=gateway_process(gw),
        engine=newest_engine(gw, engines), engines=engines, queue_depth=gw.scheduler.depth,
        in_flight=gw.scheduler.in_flight,
        queues=gw.scheduler.queues(),
        clients={name: ClientQueue(waiting=waiting, running=running)
                 for name, (waiting, running) in gw.scheduler.clients().items() if name and gw.clients.configured},
        backoff={m: round(until - now, 1) for m, (until, _) in gw.scheduler.backoff_until.items() if until > now},
        busy=gw.verdict.summary, sleep_mode=gw.pool.sleep_status(), remotes=remote_statuses(gw),
        recent_switches=gw.pool.switches[-RECENT_SWITCHES:],
        vram=VramStatus(gpus=[GpuMemory(index=g.index, name=g.name, total_bytes=g.total_bytes, used_bytes=g.used_bytes,
                                        free_bytes=g.free_bytes) for g in report.gpus], error=report.error))

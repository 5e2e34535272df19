"""The routes `animllm` and monitoring call: `/health`, `/metrics` (the gateway's own and
its engines'), and `/admin/*`: status, the switch history, switch, unload, stop."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from animllm_cli.gateway import guard
from animllm_cli.gateway.app import Gateway, guarded
from animllm_cli.gateway.guard import Refused, error
from animllm_cli.gateway.metrics import merged_exposition
from animllm_cli.gateway.pool import SWITCH_HISTORY
from animllm_cli.gateway.scheduler import QueueFull, SwitchFailed
from animllm_cli.gateway.status import newest_engine, status_report
from animllm_cli.gpu import nvml
from animllm_cli.wire import StopAnswer, SwitchHistory, SwitchReport


async def health(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return JSONResponse({"status": "ok", "model": gw.pool.model, "models": gw.pool.models,
                         "engine": newest_engine(gw).state})


@guarded
async def metrics(request: Request, gw: Gateway) -> Response:
    for name, remote in gw.upstreams.models.items():
        for upstream in remote.upstreams:
            gw.metrics.upstream_up.labels(name, upstream.url).set(1 if upstream.healthy is not False else 0)
    body = gw.metrics.render()
    texts = [t for t in await asyncio.gather(*(gw.engine_metrics(m) for m in gw.pool.models)) if t]
    if texts:
        with contextlib.suppress(ValueError):  # an engine's exposition we cannot parse is left out
            body += b"\n# the engines' own metrics\n" + merged_exposition(texts)
    return Response(body, media_type="text/plain; version=0.0.4")


@guarded
async def admin_switches(request: Request, gw: Gateway) -> Response:
    since = request.query_params.get("since")
    try:
        after = float(since) if since is not None else None
    except ValueError:
        return error(400, f"since={since!r}: expected a wall-clock time in seconds (time.time())", param="since")
    kept = [s for s in gw.pool.switches if after is None or (s.finished_at or 0) > after]
    return JSONResponse(SwitchHistory(recorded=gw.pool.switches_recorded, capacity=SWITCH_HISTORY, switches=kept).to_json())


@guarded
async def admin_status(request: Request, gw: Gateway) -> Response:
    # NVML is read in a thread, as the admission watcher does: never block the event loop.
    gpus = await asyncio.to_thread(nvml.probe, gw.nvml_module)
    return JSONResponse(status_report(gw, gpus).to_json())


async def _model_named(request: Request, gw: Gateway) -> str:
    return _resolved(await _admin_body(request, gw), gw)


async def _admin_body(request: Request, gw: Gateway) -> dict:
    return guard.parse_object(await guard.read_body(request, gw.max_body_bytes))


def _resolved(body: dict, gw: Gateway) -> str:
    wanted = body.get("model")
    if not isinstance(wanted, str) or not wanted:
        raise Refused(error(400, "expected {\"model\": NAME}", param="model"), "no_model")
    model = gw.resolve(wanted)
    if model is None:
        raise gw.not_found(wanted)
    return model


@guarded
async def admin_switch(request: Request, gw: Gateway) -> Response:
    model = await _model_named(request, gw)
    remote = gw.upstreams.get(model)
    if remote is not None:
        return JSONResponse(SwitchReport(from_model=None, to_model=model, outcome="remote", notes=[
            f"'{model}' is served by {', '.join(u.url for u in remote.upstreams)}: nothing to load here"]).to_json())
    if model in gw.pool.models:
        return JSONResponse(SwitchReport(from_model=model, to_model=model, outcome="already loaded",
                                         gpus=list(gw.pool.residents[model].gpus)).to_json())
    try:
        report = await gw.load(model)  # its own switch's report, not one that ended beside it
    except (QueueFull, SwitchFailed) as exc:
        return gw.queue_failure(model, exc)
    report = report or SwitchReport(from_model=None, to_model=model, outcome="ok")
    return JSONResponse(report.to_json())


@guarded
async def admin_unload(request: Request, gw: Gateway) -> Response:
    """{"model": M}: stop it; {"model": M, "sleep": true}: send it to sleep where it can, else stop it."""
    body = await _admin_body(request, gw)
    model, asleep = _resolved(body, gw), body.get("sleep", False)
    if not isinstance(asleep, bool):
        return error(400, "\"sleep\" must be true or false", param="sleep")
    if model in gw.upstreams:
        return error(409, f"model '{model}' is served elsewhere (upstream): nothing to unload here",
                     "model_not_loaded", param="model", code="model_is_remote")
    report = await gw.unload(model, sleep=asleep)
    if report is None:
        state = "asleep already" if asleep and model in gw.pool.sleepers else "not loaded"
        return error(409, f"model '{model}' is {state}", "model_not_loaded", param="model", code="model_not_loaded")
    return JSONResponse(report.to_json())


@guarded
async def admin_stop(request: Request, gw: Gateway) -> Response:
    if gw.shutdown_hook:
        asyncio.get_running_loop().call_later(0.05, gw.shutdown_hook)
    return JSONResponse(StopAnswer(stopping=True, engine_pids=sorted(gw.pool.all_pids())).to_json())


ROUTES = [Route("/health", health), Route("/metrics", metrics),
          Route("/admin/status", admin_status), Route("/admin/switches", admin_switches),
          Route("/admin/switch", admin_switch, methods=["POST"]),
          Route("/admin/unload", admin_unload, methods=["POST"]),
          Route("/admin/stop", admin_stop, methods=["POST"])]

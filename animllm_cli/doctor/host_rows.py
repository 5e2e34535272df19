"""The host rows: cache paths, model sources, remote models' servers, the gateway's
port, event loop and HTTP parser, and the open-file limit."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from animllm_cli.config.schema import UpstreamSpec
from animllm_cli.units import GIB, gib
from animllm_cli.doctor.registry import FAIL, PASS, SKIP, WARN, DoctorContext, Result, check, checked_models

if TYPE_CHECKING:  # client/upstream imports httpx: only the upstreams row needs it
    from animllm_cli.client.upstream import Probe


@check("paths", "cache directories writable, with free disk")
def paths(ctx: DoctorContext) -> Result:
    section = ctx.loaded.config.paths
    problems, details = [], []
    for key in ("models", "hf_cache", "vllm_cache", "torch_cache"):
        raw = getattr(section, key)
        if not raw:
            continue
        path = Path(raw)
        existing = next((p for p in [path, *path.parents] if p.exists()), Path("/"))
        free = shutil.disk_usage(existing).free
        writable = os.access(existing, os.W_OK)
        if not writable:
            problems.append(f"{key} {path}: {existing} is not writable")
        elif free < 20 * GIB:
            problems.append(f"{key} {path}: only {gib(free)} free on its disk")
        details.append(f"{key} {path}{'' if path.exists() else ' (will be created)'}, {gib(free, 0)} free")
    if problems:
        return Result(WARN if all("free" in p for p in problems) else FAIL, "; ".join(problems),
                      "point paths: at a writable disk with room for the models (a 14B AWQ is ~10 GB)")
    return Result(PASS, "; ".join(details) or "no paths configured")


@check("models", "model sources resolvable")
def model_sources(ctx: DoctorContext) -> Result:
    if not ctx.plan.models:  # the plan holds the local models checked only
        return Result(SKIP, "no model checked runs here: each is served elsewhere (upstream)")
    missing_local, downloads, found = [], [], []
    for plan in ctx.plan.models:
        source = plan.source
        if source.startswith("/") and not Path(source).is_dir():
            missing_local.append(f"{plan.model}: {source} does not exist")
        elif plan.weights_present:
            found.append(f"{plan.model} ({gib(plan.checkpoint_bytes or 0)})")
        else:
            size = f", ~{gib(plan.checkpoint_bytes)}" if plan.checkpoint_bytes else ""
            downloads.append(f"{plan.model} ({source}{size})")
    if missing_local:
        return Result(FAIL, "; ".join(missing_local), "fix `source:` or copy the model there")
    if downloads:
        return Result(WARN, f"will be downloaded on first start: {', '.join(downloads)}"
                            + (f"; present: {', '.join(found)}" if found else ""),
                      "download them now with `animllm pull` (resumable), so a first start or switch does not wait for them")
    return Result(PASS, f"all present: {', '.join(found)}")


@check("upstreams", "remote models' servers answer, take the key and serve the model")
def upstreams(ctx: DoctorContext) -> Result:
    remote = ctx.loaded.remote_model_names()
    names = [n for n in checked_models(ctx) if n in remote]
    if not names:
        return Result(SKIP, f"{ctx.model} runs here: no remote model checked" if remote else
                      "no model is served elsewhere (upstream:)")
    results = [_remote_model(ctx, name) for name in names]
    status = next((s for s in (FAIL, WARN) if any(r.status == s for r in results)), PASS)
    fixes = list(dict.fromkeys(r.fix for r in results if r.fix and r.status != PASS))
    return Result(status, "; ".join(r.detail for r in results), "; ".join(fixes) or None)


def _remote_model(ctx: DoctorContext, name: str) -> Result:
    """One remote model: its key's variable, its CA bundle, then every URL probed at once
    (client/upstream.probe: the gateway's own health check). Never prints the key."""
    import asyncio

    from animllm_cli.client.upstream import MissingKey, tls_setting, upstream_key

    spec = ctx.loaded.config.models[name].upstream
    try:
        key = upstream_key(spec, ctx.process_env)
    except MissingKey as exc:
        return Result(FAIL, f"{name}: {exc}", f"export {spec.api_key_env}=<the server's key> where animllm runs")
    try:
        tls = tls_setting(spec)
    except OSError as exc:  # ssl.SSLError is one too: a file that is not PEM certificates
        return Result(FAIL, f"{name}: models.{name}.upstream.ca_bundle {spec.ca_bundle} cannot be read: "
                            f"{getattr(exc, 'strerror', None) or exc}",
                      f"point models.{name}.upstream.ca_bundle at a readable PEM file of CA certificates")
    probes = asyncio.run(_probe_urls(spec, spec.model or name, key, tls))
    return _judge_remote(name, spec, probes)


async def _probe_urls(spec: UpstreamSpec, served_name: str, key: str | None, tls) -> list[Probe]:
    from animllm_cli.client.upstream import http_client, probe_all

    async with http_client(tls) as client:  # the gateway's health checks' own client and probe
        return await probe_all(client, spec, served_name, key)


def _judge_remote(name: str, spec: UpstreamSpec, probes: list[Probe]) -> Result:
    from animllm_cli.client.upstream import sends_key_in_clear

    failed = [p for p in probes if not p.ok]
    if failed:
        return Result(FAIL, "; ".join(f"{name}: {p.url} {p.problem}" for p in failed),
                      f"start the server, or fix models.{name}.upstream (urls, model, api_key_env); "
                      f"GET <url>/v1/models lists what a server serves")
    detail = f"{name}: " + ", ".join(f"{p.url} answers in {p.seconds * 1000:.0f} ms" for p in probes)
    clear = [url for url in spec.urls if sends_key_in_clear(spec, url)]
    if clear:
        return Result(WARN, f"{detail}; but the key in {spec.api_key_env} goes over plain http to "
                            f"{', '.join(clear)}, readable on the network path",
                      f"use https:// in models.{name}.upstream.urls for a server on another host")
    return Result(PASS, detail)


@check("port", "gateway port free")
def port(ctx: DoctorContext) -> Result:
    from animllm_cli.bind import bind_error

    server = ctx.loaded.config.server
    problem = bind_error(server.host, server.port)
    if problem:
        return Result(FAIL, f"{server.host}:{server.port} is taken ({problem}){_port_owner(server.port)}",
                      "stop what holds it, or set server.port (ANIMLLM_SERVER__PORT)")
    return Result(PASS, f"{server.host}:{server.port} is free")


def _port_owner(number: int) -> str:
    import psutil

    try:
        for conn in psutil.net_connections("inet"):
            if conn.laddr and conn.laddr.port == number and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f" by pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


@check("server", "the gateway's event loop and HTTP parser")
def server(ctx: DoctorContext) -> Result:
    """What a gateway started here runs on (animllm's own interpreter, not the engine's):
    uvloop and httptools, or the slower asyncio and h11 where they are missing."""
    from animllm_cli import server_stack

    stack = server_stack.chosen()
    detail = f"{server_stack.loop_text(stack.loop)} / {server_stack.http_text(stack.http)}"
    if stack.fast:
        return Result(PASS, detail)
    return Result(WARN, f"{detail}: without {' and '.join(stack.missing())} the gateway relays each chunk with "
                        f"more CPU", server_stack.FIX)


@check("ulimit", "open-file limit")
def open_files(ctx: DoctorContext) -> Result:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    detail = f"soft {soft}, hard {hard}"
    if hard != resource.RLIM_INFINITY and hard < 65536:
        return Result(WARN, f"{detail}: many concurrent streams need more file descriptors",
                      "raise it: `ulimit -n 65536` (or nofile in /etc/security/limits.conf)")
    return Result(PASS, f"{detail} (vLLM raises the soft limit itself)")

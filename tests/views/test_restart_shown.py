"""A restart, as `status` and `switch` show it in a terminal: how the engine it replaced died."""

from __future__ import annotations

import os

from rich.console import Console

from animllm_cli.views.gateway import status_table, switch_table
from animllm_cli.wire import EngineDeath, EngineStatus, GatewayProcess, StatusReport, SwitchReport, VramStatus

DIED = EngineDeath(kind="signal", cause="the engine process was killed by SIGKILL", signal="SIGKILL",
                   gone=["VLLM::EngineCore (pid 4251)"])
RESTART = SwitchReport(from_model=None, to_model="a", outcome="ok", reason="restart", chosen_by="only", total_s=31.0,
                       load_s=30.5, load_kind="cold", death=DIED)
SAID = "the engine process was killed by SIGKILL; already gone: VLLM::EngineCore (pid 4251)"


def shown(renderable: object) -> str:
    with open(os.devnull, "w") as sink:
        console = Console(width=200, record=True, color_system=None, file=sink)
        console.print(renderable)
    return console.export_text()


def test_status_names_the_restart_and_how_the_engine_died() -> None:
    report = StatusReport(gateway=GatewayProcess(pid=1, uptime_s=40.0), queue_depth=0, in_flight=0, vram=VramStatus(),
                          url="http://127.0.0.1:8000",
                          engine=EngineStatus(model="a", state="ready", last_switch=RESTART))
    lines = [" ".join(line.split()) for line in shown(status_table(report)).splitlines()]
    assert "last switch - -> a: ok in 31.00s (its engine died)" in lines
    assert f"restarted after {SAID}" in lines


def test_switch_shows_how_the_engine_it_replaced_died() -> None:
    lines = [" ".join(line.split()) for line in shown(switch_table(RESTART)).splitlines()]
    assert f"restarted after {SAID}" in lines

"""The view at 80 and at 50 columns: the figures that matter are there, no line is wider
than the terminal, and nothing folds onto a second line."""

from __future__ import annotations

import time

import pytest
from rich.console import Console

from animllm_cli.wire import ClientQueue, EngineDeath, ModelQueue, RemoteStatus, SwitchReport, UpstreamStatus
from animllm_cli.top.render import render
from animllm_cli.top.snapshot import EngineRow, GatewayInfo, GpuRow, Snapshot

GIB = 1 << 30
LONG = "qwen2.5-coder-7b-instruct-awq-with-a-long-name"


def busy_box() -> Snapshot:
    gateway = GatewayInfo(url="http://127.0.0.1:8000", running=True, reachable=True, pid=4242, uptime_s=812)
    switches = [SwitchReport(from_model="a", to_model=LONG, outcome="ok", total_s=34.5, reason="max_wait",
                             finished_at=time.time() - i) for i in range(10)]
    return Snapshot(time.time(), 1.0, gateway,
                    [GpuRow(0, "NVIDIA GeForce RTX 5080", 16 * GIB, 14 * GIB, 87, 41)], None,
                    engines=[EngineRow(LONG, "ready", None, [0], 7 * GIB, 4, 2, 4, 0, 0.123, 41.5),
                             EngineRow("vision", "starting", "loading weights", [0], None, 0, 1, None, None, None, None)],
                    remotes=[RemoteStatus(model="big", served_name="big",
                                          upstreams=[UpstreamStatus(url="http://10.0.0.5:8000", healthy=True)])],
                    queue_depth=3, in_flight=4, queues={"vision": ModelQueue(waiting=1, oldest_wait_s=12.5)},
                    busy="the engine's KV cache is 96% full (threshold 95%)", recent_switches=switches)


def drawn(shot: Snapshot, width: int, height: int | None = None, **options) -> list[str]:
    console = Console(width=width, height=height or 25, record=True, color_system=None, file=open("/dev/null", "w"))
    console.print(render(shot, width, height, **options))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= width, "\n".join(lines)
    return lines


def test_at_80_columns_every_column_shows() -> None:
    lines = drawn(busy_box(), 80, 24, live=True)
    text = "\n".join(lines)
    assert len(lines) <= 24, text
    for expected in ("http://127.0.0.1:8000", "pid 4242", "q quits", "queue 3", "GeForce RTX 5080", "14.0/16.0",
                     "87%", "41%", "GPU", "VRAM", "run/wait", "queued", "KV", "tok/s", "12%", "41.5", "4/0", "starting", "vision starting: loading weights",
                     "remote 1/1", "refusing requests", "recent switches", "-> " + LONG + " ok 34.5s (max_wait)"):
        assert expected in text, f"{expected!r} missing:\n{text}"


def test_at_50_columns_the_less_important_columns_go_and_figures_stay_whole() -> None:
    text = "\n".join(drawn(busy_box(), 50, 24, live=True))
    for expected in ("animllm top", "q quits", "run/wait", "KV", "tok/s", "12%", "41.5", "4/0", "14.0/16.0", "87%"):
        assert expected in text, f"{expected!r} missing:\n{text}"
    for dropped in ("queued", "mem bw"):
        assert dropped not in text
    assert "qwen2.5-coder" in text and LONG not in text.split("recent switches")[0]  # the name is cut, not folded


def test_a_short_screen_shows_fewer_switches() -> None:
    assert len(drawn(busy_box(), 80, 16, live=True)) <= 16
    once = "\n".join(drawn(busy_box(), 80))  # printed once: the newest few
    assert once.count("(max_wait)") == 5


@pytest.mark.parametrize("width", [80, 50])
def test_without_a_gateway_it_shows_the_gpus_and_says_so(width: int) -> None:
    shot = Snapshot(time.time(), 0.0, GatewayInfo(problem="no gateway is running", hint="start one"),
                    [GpuRow(0, "NVIDIA GeForce RTX 5080", 16 * GIB, GIB, None, None)], None)
    text = "\n".join(drawn(shot, width))
    assert "gateway not running" in text and "hint: start one" in text and "1.0/16.0" in text
    assert "model" not in text  # no engine table to show


def test_a_gateway_that_stopped_answering_is_said_not_reachable() -> None:
    shot = Snapshot(time.time(), 0.0, GatewayInfo(url="http://127.0.0.1:8000", running=True, pid=7,
                                                  problem="the gateway at http://127.0.0.1:8000 does not answer"),
                    [], "no NVIDIA driver (NVML not found)")
    text = "\n".join(drawn(shot, 80))
    assert "gateway not reachable at http://127.0.0.1:8000" in text and "does not answer" in text
    assert "GPUs: no NVIDIA driver" in text


def test_names_from_the_server_are_never_markup() -> None:
    shot = busy_box()
    shot.engines[0].model = "[bold]odd[/bold]"
    assert "[bold]odd[/bold]" in "\n".join(drawn(shot, 80))


def test_a_restart_says_how_the_engine_it_replaced_died() -> None:
    shot = busy_box()
    died = EngineDeath(kind="signal", cause="the engine process was killed by SIGKILL", signal="SIGKILL")
    shot.recent_switches = [SwitchReport(from_model=None, to_model="a", outcome="ok", total_s=31.0, reason="restart",
                                         death=died, finished_at=time.time())]
    assert "- -> a ok 31.0s (restart: the engine process was killed by SIGKILL)" in "\n".join(drawn(shot, 120))


def test_each_clients_requests_show_on_one_line() -> None:
    shot = busy_box()
    shot.clients = {"frames": ClientQueue(waiting=120, running=4), "artist": ClientQueue(waiting=0, running=1)}
    text = "\n".join(drawn(shot, 80, 30, live=True))
    assert "clients  artist: 1 running, 0 waiting  frames: 4 running, 120 waiting" in text, text
    assert "clients" not in "\n".join(drawn(busy_box(), 80, 30, live=True))  # none named: no line

"""Every table animllm prints, at 80 and at 60 columns, with the studio's real model names,
long sources, URLs, paths and notes: no line is wider than the terminal, and no word of the
data is broken across lines. A value that must be cut is cut on its line with an ellipsis.

A word is what the same output shows at 1000 columns, where nothing needs to fit: each
piece of text at 80 or 60 columns must be one of those words, or an ellipsized one (its
head the start of a word, its tail the end of one)."""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
from rich.cells import cell_len

from animllm_cli.bench.metrics import Sample, summarize
from animllm_cli.bench.mix import MixModel, MixResult
from animllm_cli.bench.results import BenchResult, CheckRow, LevelResult, SwitchRun
from animllm_cli.bench.slo import Slo
from animllm_cli.bench.switching import summarize as summarize_switches
from animllm_cli.output import Output
from animllm_cli.units import GIB
from animllm_cli.wire import (EngineStatus, GatewayProcess, GpuMemory, ModelQueue, RemoteStatus, SleepModeStatus,
                              StatusReport, SwitchReport, UpstreamStatus, VramStatus)
from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.support.helpers import run_cli, write

WIDTHS = (80, 60)
WIDE = 1000
BOX = set("─━═│ ")
JOINERS = ",;:"

# The studio's models, and two of a user's own: one served by other machines, one from a local path.
USER_CONFIG = """
models:
  gpt-oss-120b:
    upstream:
      urls: [https://gpu-02.studio.internal.example.com:8443/v1, https://gpu-03.studio.internal.example.com:8443/v1]
      model: openai/gpt-oss-120b
      api_key_env: STUDIO_GPU_KEY
    tasks: [reasoning-large, chat]
  coder-finetune:
    source: /mnt/models/checkpoints/qwen2.5-coder-7b-instruct-studio-finetune-2025-06
    profile: small
    tasks: [code]
    aliases: [coder-ft, qwen2.5-coder-7b-studio-finetune]
"""
FINETUNE = "qwen2.5-coder-7b-instruct-studio-finetune"
GPT_OSS_URLS = ["https://gpu-02.studio.internal.example.com:8443/v1", "https://gpu-03.studio.internal.example.com:8443/v1"]


# --------------------------------------------------------------------------- the check
def broken_words(narrow: str, wide: str) -> list[str]:
    """The pieces of text in `narrow` that are neither a word of `wide` nor an ellipsized one.
    The punctuation that joins a value to a line under the table ("vision:", "small;") is
    not part of its word."""
    def pieces(text: str) -> list[str]:
        return [piece.strip(JOINERS) for piece in text.split() if piece.strip(JOINERS)]

    words = set(pieces(wide))

    def ellipsized(piece: str) -> bool:
        head, _, tail = piece.partition("…")
        return any(word.startswith(head) for word in words) and any(word.endswith(tail) for word in words)

    return [piece for piece in pieces(narrow)
            if piece not in words and not set(piece) <= BOX and not ("…" in piece and ellipsized(piece))]


def assert_fits(printed: Callable[[int], str], what: str) -> None:
    wide = printed(WIDE)
    assert wide.strip(), f"{what} printed nothing"
    for width in WIDTHS:
        text = printed(width)
        too_wide = [line for line in text.splitlines() if cell_len(line) > width]
        broken = broken_words(text, wide)
        assert not too_wide and not broken, (f"{what} at {width} columns: {len(too_wide)} line(s) too wide, "
                                             f"words broken: {broken[:8]}\n{text}")


def test_the_check_catches_a_folded_word_and_a_wide_line() -> None:
    wide = "model    source\ncoder    Qwen/Qwen2.5-Coder-7B-Instruct-AWQ\n"
    assert broken_words("coder  Qwen/Qwen2.5-Cod\n       er-7B-Instruct-AWQ", wide) == ["Qwen/Qwen2.5-Cod",
                                                                                        "er-7B-Instruct-AWQ"]
    assert broken_words("coder  Qwen/Qwen2…truct-AWQ\nmodel  source", wide) == []
    with pytest.raises(AssertionError, match="1 line"):
        assert_fits(lambda width: "x" * 70 if width == 60 else wide, "a table")


def test_a_value_is_cut_in_the_middle_to_the_cells_it_has() -> None:
    from rich.text import Text

    from animllm_cli.fit import middle_cut

    cut = middle_cut(Text("Qwen2.5-Coder-7B-Instruct-AWQ", style="bold"), 16)
    assert (cut.plain, cell_len(cut.plain)) == ("Qwen2.5-…uct-AWQ", 16)
    assert cut.spans and cut.spans[0].style == "bold"  # the head keeps its style
    assert middle_cut(Text("vision"), 16).plain == "vision"


# --------------------------------------------------------------------------- printing at a width
@pytest.fixture
def studio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANIMLLM_CONFIG", str(write(tmp_path / "user.yaml", USER_CONFIG)))


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Callable:
    """shown(show) -> printed(width): what `show(out)` prints on stdout in a terminal that wide."""
    def printed_by(show: Callable[[Output], None]) -> Callable[[int], str]:
        def printed(width: int) -> str:
            monkeypatch.setenv("COLUMNS", str(width))
            capsys.readouterr()
            show(Output())
            return capsys.readouterr().out
        return printed
    return printed_by


def cli(*args: str) -> Callable[[int], str]:
    return lambda width: run_cli(*args, env={"COLUMNS": str(width)}).stdout


# --------------------------------------------------------------------------- the config's tables
def test_models(studio) -> None:
    assert_fits(cli("models"), "models")
    at_80 = cli("models")(80)
    # the studio's sources whole, without their org; the aliases under the table
    assert "Qwen2.5-Coder-7B-Instruct-AWQ" in at_80 and "Qwen/" not in at_80
    assert "* coder: aliases qwen-coder, qwen2.5-coder-7b" in at_80


@pytest.mark.parametrize("args", [["--vram", "16"], ["--vram", "8"], ["--vram", "16", "--together", "vision,coder"]],
                         ids=["fits", "does-not-fit", "together"])
def test_plan(studio, args: list[str]) -> None:
    assert_fits(cli("plan", *args), "plan " + " ".join(args))


def test_serve_endpoints(shown) -> None:
    from animllm_cli.cli.serve import endpoints_table

    assert_fits(shown(lambda out: out.show(endpoints_table("http://studio-box.local:8000"))), "serve's endpoints")


def test_config_explain(studio) -> None:
    assert_fits(cli("config", "show", "coder-finetune", "--explain"), "config show --explain")


@pytest.mark.parametrize("driver", [False, True], ids=["no-driver", "two-gpus"])
def test_doctor(studio, monkeypatch: pytest.MonkeyPatch, driver: bool) -> None:
    from animllm_cli.doctor import host_rows, registry
    from animllm_cli.engine import python_env
    from animllm_cli.engine.python_env import PythonEnv
    from tests.doctor.conftest import GOOD_ENV

    gpus = [FakeGpu(used=6 * GIB, compute=[(os.getpid(), 5 * GIB)], graphics=[(1, None)]),
            FakeGpu(name="NVIDIA RTX 6000 Ada Generation", capability=(8, 9), total=48 * GIB)]
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(gpus, missing=not driver))
    monkeypatch.setattr(python_env, "probe_python", lambda executable, extra=None: PythonEnv(sys.executable,
                                                                                             **GOOD_ENV))
    # The host's free RAM and disk, fixed: the renders at each width must show the same figures
    monkeypatch.setattr(registry, "_host_available", lambda: 22 * GIB)
    monkeypatch.setattr(host_rows.shutil, "disk_usage", lambda path: SimpleNamespace(total=512 * GIB, used=448 * GIB, free=64 * GIB))
    assert_fits(cli("doctor", "--skip", "port"), "doctor")


# --------------------------------------------------------------------------- the gateway's tables
def studio_status() -> StatusReport:
    now = time.time()
    last = SwitchReport(from_model="reasoning", to_model="vision", outcome="failed", evicted=["reasoning"], gpus=[0],
                        reason="max_wait", stop_s=1.52, vram_release_s=0.81, load_s=38.4, total_s=40.9,
                        finished_at=now - 30, load_kind="cold",
                        error="engine exited with code 1 during 'loading weights': torch.OutOfMemoryError: CUDA out "
                              "of memory. Tried to allocate 1.02 GiB")
    engines = [
        EngineStatus(model="vision", state="ready", gpus=[0], share=0.58, vram_bytes=int(9.1 * GIB),
                     vram_peak_bytes=int(9.4 * GIB), in_flight=2, waiting=1, idle_s=0, keep_alive_s=600,
                     loaded_since=now - 400, last_switch=last),
        EngineStatus(model=FINETUNE, state="sleeping", gpus=[0], share=0.3, vram_bytes=int(0.5 * GIB), idle_s=412,
                     keep_alive_s=1800, unload_in_s=1388, can_sleep=True, sleep_level=1, host_bytes=int(5.2 * GIB)),
        EngineStatus(model="reasoning", state="starting", phase="loading weights (safetensors shard 2 of 3)",
                     gpus=[1], vram_planned_bytes=int(13.6 * GIB), pinned=True,
                     death_reason="engine exited with code 1 during 'loading weights': torch.OutOfMemoryError"),
    ]
    remote = RemoteStatus(model="gpt-oss-120b", served_name="openai/gpt-oss-120b", key_env="STUDIO_GPU_KEY",
                          key_problem="STUDIO_GPU_KEY is not set", in_flight=1, waiting=2,
                          upstreams=[UpstreamStatus(url=GPT_OSS_URLS[0], healthy=True),
                                     UpstreamStatus(url=GPT_OSS_URLS[1], healthy=False,
                                                    problem="unreachable: connection refused (ConnectError)")])
    vram = VramStatus(gpus=[GpuMemory(index=0, name="NVIDIA GeForce RTX 5080", total_bytes=16 * GIB,
                                      used_bytes=int(14.2 * GIB), free_bytes=int(1.8 * GIB)),
                            GpuMemory(index=1, name="NVIDIA RTX 6000 Ada Generation", total_bytes=48 * GIB,
                                      used_bytes=int(2.1 * GIB), free_bytes=int(45.9 * GIB))])
    return StatusReport(url="http://127.0.0.1:8000", gateway=GatewayProcess(pid=48211, uptime_s=5231),
                        engine=engines[2], engines=engines, queue_depth=3, in_flight=3,
                        queues={"reasoning": ModelQueue(waiting=3, oldest_wait_s=41.2),
                                FINETUNE: ModelQueue(waiting=1, oldest_wait_s=2.0)},
                        busy="the engine's KV cache is 96% full (threshold 95%)", vram=vram,
                        sleep_mode=SleepModeStatus(available=False, reason="vLLM 0.10.0 in this interpreter has no "
                                                                           "sleep mode on CUDA 12.4 under WSL"),
                        remotes=[remote])


def test_status(shown) -> None:
    from animllm_cli.cli.admin import _show_status

    assert_fits(shown(lambda out: _show_status(out, studio_status())), "status")


def test_ps(shown) -> None:
    from animllm_cli.views.gateway import engines_table

    report = studio_status()
    assert_fits(shown(lambda out: out.show(engines_table(report.engines, report.remotes))), "ps")


def test_switch(shown) -> None:
    from animllm_cli.cli.admin import _show_switch

    report = SwitchReport(from_model="reasoning", to_model=FINETUNE, outcome="ok", evicted=["reasoning", "vision"],
                          slept=["vision"], gpus=[0], reason="cold", stop_s=2.31, sleep_s=1.12, load_s=41.7,
                          total_s=45.2, vram_free_before=int(1.2 * GIB), vram_free_after=int(0.9 * GIB),
                          vram_note="not measured: NVML names no process on this machine (a container or WSL)",
                          load_kind="cold", wake_error="vision did not wake within 60s (POST /wake_up timed out)",
                          notes=[f"reasoning: stopped, not kept asleep: the card has no room for '{FINETUNE}' beside "
                                 f"it (measured)"])
    assert_fits(shown(lambda out: _show_switch(out, report)), "switch")


def test_top() -> None:
    from rich.console import Console

    from animllm_cli.top.render import render
    from tests.top.test_render import busy_box

    shot = busy_box()  # one snapshot: its clock reads the same at every width

    def printed(width: int) -> str:
        console = Console(width=width, record=True, color_system=None, file=open(os.devnull, "w"))
        console.print(render(shot, width))
        return console.export_text()

    assert_fits(printed, "top")


# --------------------------------------------------------------------------- bench's tables
def _samples(rng: random.Random, model: str | None, n: int, ttft: float, tpot: float) -> list[Sample]:
    return [Sample(ok=i % 10 != 9, start=float(i), latency=ttft + 255 * tpot, ttft=ttft * rng.uniform(0.8, 1.5),
                   itl=[tpot] * 255, prompt_tokens=1024, output_tokens=256, model=model,
                   error=None if i % 10 != 9 else "HTTP 503: the gateway's queue for 'reasoning' is full (queue_max 64)")
            for i in range(n)]


def studio_run() -> BenchResult:
    rng = random.Random(3)
    slo = Slo(ttft_ms=2000, tpot_ms=50)
    result = BenchResult(url="http://127.0.0.1:8000", model="reasoning", input_len=1024, output_len=256,
                         prompts="prompts/studio-reasoning-long-context-prompts-2025-06.jsonl",
                         goodput_slo={"ttft_ms": 2000, "tpot_ms": 50, "e2el_ms": None})
    for level in (1, 16):
        result.levels.append(LevelResult(concurrency=level, request_rate=None, vram_peak_bytes=int(14.6 * GIB),
                                         summary=summarize(_samples(rng, None, 40, 1.2 * level, 0.045), 512.3, slo)))
    switches = [{**SwitchReport(from_model=a, to_model=b, outcome="ok", stop_s=1.4, vram_release_s=0.6, load_s=38.2,
                                total_s=40.3, load_kind="cold").to_json(), "first_token_s": 0.41}
                for a, b in (("reasoning", "vision"), ("vision", "reasoning"))]
    result.switch = SwitchRun(count=2, switches=switches, summary=summarize_switches(switches), cold_loads=2)
    result.check = [CheckRow("TTFT median ms at concurrency 16", 19234.5, "<= 2000", False),
                    CheckRow("output throughput tok/s at concurrency 1", 21.3, ">= 20", True)]
    return result


def test_bench(shown) -> None:
    from animllm_cli.cli.bench import _show_run

    assert_fits(shown(lambda out: _show_run(out, studio_run())), "bench")


def test_bench_compare(shown, tmp_path: Path) -> None:
    from animllm_cli.bench.compare import compare
    from animllm_cli.cli.bench import _show_comparison

    a, b = studio_run().to_json(), {**studio_run().to_json(), "model": "vision", "input_len": 4096}
    comparison = compare(Path("runs/2025-06-01-studio-rtx5080-reasoning-baseline.json"), a,
                         Path("runs/2025-06-14-studio-rtx5080-reasoning-fp8-kv-cache.json"), b)
    assert_fits(shown(lambda out: _show_comparison(out, comparison)), "bench --compare")


def test_bench_mix(shown) -> None:
    from animllm_cli.cli.bench import _show_mix

    rng = random.Random(5)
    weights = {"vision": 0.5, "reasoning": 0.3, FINETUNE: 0.2}
    models = [MixModel(model, weight, summarize(_samples(rng, model, 30, 0.8, 0.03), 300.2), behind_switch=12,
                       switches_in=7) for model, weight in weights.items()]
    reports = [{**SwitchReport(from_model=a, to_model=b, outcome="ok", reason="max_wait", stop_s=1.4,
                               vram_release_s=0.6, load_s=38.2, total_s=40.3, load_kind="cold").to_json(),
                "first_token_s": 0.41} for a, b in (("vision", FINETUNE), (FINETUNE, "reasoning"))]
    result = MixResult(url="http://127.0.0.1:8000", request_rate=2.0, burstiness=1.0, ramp_up=None, requests=600,
                       input_len=1024, output_len=256, endpoint="/v1/completions", prompts="random", seed=0,
                       duration_s=300.2, models=models, overall=models[0].summary,
                       switch=SwitchRun(count=2, switches=reports, summary=summarize_switches(reports)),
                       switching_s=80.6, switching_share=0.27)
    assert_fits(shown(lambda out: _show_mix(out, result)), "bench-mix")

"""Phases and diagnoses read from log lines, including a real vLLM 0.32 (CPU) start log."""

from __future__ import annotations

from pathlib import Path

from animllm_cli.engine import phases
from animllm_cli.engine.diagnosis import Context, diagnose

REAL_LOG = Path(__file__).with_name("data") / "vllm-0.32-cpu-start.log"


def _walk(lines: list[str]) -> list[str]:
    seen, phase = [phases.ORDER[0]], phases.ORDER[0]
    for line in lines:
        phase = phases.advance(phase, line)
        if phase != seen[-1]:
            seen.append(phase)
    return seen


def test_real_vllm_start_log_walks_the_phases_in_order() -> None:
    assert _walk(REAL_LOG.read_text().splitlines()) == [
        "starting", "resolving model", "starting engine core", "starting workers", "loading weights", "profiling memory",
        "allocating KV cache", "warming up", "starting server"]


def test_warnings_and_config_dumps_do_not_fake_a_phase() -> None:
    noise = ["WARNING Enforce eager set, disabling torch.compile, CUDAGraphs, and JIT kernel warmup.",
             "INFO Initializing a V1 LLM engine with config: download_dir=None, 'cudagraph_mode': NONE"]
    assert _walk(noise) == ["starting", "starting workers"]  # EngineCore's first line: not compiling, not loading


def test_the_breakdown_times_each_phase_from_its_marker_to_the_next_in_the_order_they_came() -> None:
    marks = phases.Marks()
    for at_s, line in [(7.4, "(APIServer pid=1) INFO non-default args: {}"), (17.2, "Resolved architecture: Qwen2"),
                       (24.7, "(EngineCore pid=2) Initializing a V1 LLM engine (v0.32.0) with config: ..."),
                       (33.3, "Starting to load model tiny-a..."), (33.4, "Loading weights took 0.00 seconds"),
                       # a GPU compiles during the memory profile: before the KV cache, not after it
                       (35.0, "torch.compile takes 9.1 s in total"), (44.0, "Available KV cache memory: 3 GiB"),
                       (44.2, "GPU KV cache size: 2,097,152 tokens"), (44.3, "Capturing CUDA graphs (PIECEWISE)"),
                       (50.0, "init engine (profile, create kv cache, warmup model) took 16.7 s"),
                       (50.5, "Loading weights took 9 s"),  # a repeat: only the first counts
                       (51.0, "INFO:     Application startup complete.")]:
        marks.see(line, at_s)
    took = {p.name: p.took_s for p in phases.breakdown(marks.timeline(), 51.2)}
    assert list(took) == ["starting", "resolving model", "starting engine core", "starting workers", "loading weights",
                          "profiling memory", "compiling", "allocating KV cache", "warming up", "capturing graphs",
                          "starting server", "checking health"]
    assert took["starting"] == 7.4 and took["starting engine core"] == 7.5 and took["compiling"] == 9.0
    assert took["checking health"] == 0.2 and round(sum(took.values()), 3) == 51.2


def test_the_breakdown_of_the_real_log_names_the_three_python_start_ups() -> None:
    marks = phases.Marks()
    for second, line in enumerate(REAL_LOG.read_text().splitlines()):
        marks.see(line, float(second))
    names = [name for name, _ in marks.timeline()]
    assert names[:4] == ["starting", "resolving model", "starting engine core", "starting workers"]


def test_phase_never_moves_back() -> None:
    assert phases.advance("capturing graphs", "Loading weights took 2 s") == "capturing graphs"


def _ctx() -> Context:
    return Context(model="coder", port=8123, gpu_holders=lambda: "Xorg (pid 1, 300 MiB)")


def test_diagnoses() -> None:
    cases = {
        "kv-cache": "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`",
        "out-of-memory": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "model-not-found": "OSError: nope/model is not a local folder and is not a valid model identifier",
        "port-in-use": "OSError: [Errno 98] Address already in use",
        "unsupported-setting": "  Value error, User-specified max_model_len (100000) is greater than the derived",
    }
    for kind, line in cases.items():
        found = diagnose(["INFO something harmless", line], _ctx())
        assert found is not None and found.kind == kind, (kind, found)
    assert "Xorg (pid 1, 300 MiB)" in diagnose([cases["out-of-memory"]], _ctx()).fix
    assert "port 8123" in diagnose([cases["port-in-use"]], _ctx()).message
    assert diagnose(["INFO all is well"], _ctx()) is None


def test_cpu_backend_memory_line_is_the_free_memory_diagnosis() -> None:
    line = ("ValueError: Available memory on node 0 (7.25/8.59 GiB) on startup is less than desired CPU memory "
            "utilization (0.92, 7.90 GiB). On the CPU backend, ...")
    found = diagnose([line], _ctx())
    assert found.kind == "free-memory" and "(7.25/8.59 GiB)" in found.message and "0.92" in found.message

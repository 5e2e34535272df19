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
        "starting", "resolving model", "loading weights", "profiling memory", "allocating KV cache", "starting server"]


def test_warnings_and_config_dumps_do_not_fake_a_phase() -> None:
    noise = ["WARNING Enforce eager set, disabling torch.compile, CUDAGraphs, and JIT kernel warmup.",
             "INFO Initializing a V1 LLM engine with config: download_dir=None, 'cudagraph_mode': NONE"]
    assert _walk(noise) == ["starting"]


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

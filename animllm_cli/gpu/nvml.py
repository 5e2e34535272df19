"""Read the NVIDIA driver through NVML (the `nvidia-ml-py` package, imported as `pynvml`).

`probe()` never raises: a machine without a driver yields a `GpuReport` with `error` set,
so the doctor can FAIL the GPU rows and still run everything else. The NVML module is a
parameter so tests can hand in a fake one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any


ARCHITECTURES = {(7, 0): "Volta", (7, 2): "Volta", (7, 5): "Turing", (8, 0): "Ampere", (8, 6): "Ampere",
                 (8, 7): "Ampere", (8, 9): "Ada Lovelace", (9, 0): "Hopper"}


def architecture(major: int, minor: int) -> str:
    if major in (10, 11, 12):
        return "Blackwell"
    return ARCHITECTURES.get((major, minor), "unknown")


@dataclass
class GpuProcess:
    pid: int
    name: str
    used_bytes: int | None  # None: the driver does not say (Windows WDDM, some containers)


@dataclass
class Gpu:
    index: int
    name: str
    uuid: str
    compute_capability: str
    architecture: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    processes: list[GpuProcess] = field(default_factory=list)
    # Over the driver's last sample period: kernels running, and memory being read or
    # written. None: the device or driver does not report it (some vGPUs, WSL).
    utilization_gpu_percent: int | None = None
    utilization_memory_percent: int | None = None


@dataclass
class GpuReport:
    driver_version: str | None = None
    cuda_driver_version: str | None = None   # the newest CUDA the driver supports, e.g. "12.8"
    gpus: list[Gpu] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _process_name(pid: int) -> str:
    import psutil

    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"


def probe(nvml: ModuleType | None = None) -> GpuReport:
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return GpuReport(error="nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        if isinstance(exc, getattr(nvml, "NVMLError_LibraryNotFound", ())) or \
                getattr(exc, "value", None) == getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", 12):
            return GpuReport(error="no NVIDIA driver (NVML not found)")
        return GpuReport(error=f"NVIDIA driver not reachable: {exc}")
    try:
        return _read(nvml)
    except nvml.NVMLError as exc:
        return GpuReport(error=f"NVML query failed: {exc}")
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def _read(nvml: ModuleType) -> GpuReport:
    cuda = nvml.nvmlSystemGetCudaDriverVersion()
    report = GpuReport(driver_version=_text(nvml.nvmlSystemGetDriverVersion()),
                       cuda_driver_version=f"{cuda // 1000}.{cuda % 1000 // 10}")
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        report.gpus.append(Gpu(
            index=index, name=_text(nvml.nvmlDeviceGetName(handle)), uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            compute_capability=f"{major}.{minor}", architecture=architecture(major, minor),
            total_bytes=int(memory.total), used_bytes=int(memory.used), free_bytes=int(memory.free),
            processes=_processes(nvml, handle), **_utilization(nvml, handle)))
    return report


def _utilization(nvml: ModuleType, handle: Any) -> dict[str, int | None]:
    try:
        rates = nvml.nvmlDeviceGetUtilizationRates(handle)
    except nvml.NVMLError:  # NOT_SUPPORTED and the like: no figure, not a failed probe
        return {}
    return {"utilization_gpu_percent": int(rates.gpu), "utilization_memory_percent": int(rates.memory)}


def _processes(nvml: ModuleType, handle: Any) -> list[GpuProcess]:
    seen: dict[int, GpuProcess] = {}
    for query in (nvml.nvmlDeviceGetComputeRunningProcesses, nvml.nvmlDeviceGetGraphicsRunningProcesses):
        try:
            entries = query(handle)
        except nvml.NVMLError:
            continue
        for entry in entries:
            used = getattr(entry, "usedGpuMemory", None)
            if seen.get(entry.pid) is None or used:
                seen[entry.pid] = GpuProcess(entry.pid, _process_name(entry.pid), int(used) if used else None)
    return sorted(seen.values(), key=lambda p: -(p.used_bytes or 0))

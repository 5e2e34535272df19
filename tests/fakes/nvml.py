"""A fake NVML module: the subset of `pynvml` that animllm calls, answering from a
description of GPUs and processes. Hand it to `animllm_cli.gpu.nvml.probe(nvml=...)`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from animllm_cli.units import GIB

NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_NOT_SUPPORTED = 3


class NVMLError(Exception):
    def __init__(self, value: int = 999) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class NVMLError_LibraryNotFound(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_LIBRARY_NOT_FOUND)


@dataclass
class FakeGpu:
    name: str = "NVIDIA GeForce RTX 5080"
    capability: tuple[int, int] = (12, 0)
    total: int = 16 * GIB
    used: int = int(0.4 * GIB)
    compute: list[tuple[int, int | None]] = field(default_factory=list)   # (pid, bytes)
    graphics: list[tuple[int, int | None]] = field(default_factory=list)
    # What each running engine (a fake or a real vLLM API server, a child of this process)
    # holds, as a real card shows it: a number of bytes, or "share": its
    # --gpu-memory-utilization of this card, on the GPUs its CUDA_VISIBLE_DEVICES names.
    engine_bytes: int | str = 0
    # Which engines are on this card: those whose environment names it (FAKE_NVML_CARD, from
    # their config's env), or, for None, those that name no card. So a gateway's fake card
    # never counts the engines another gateway in the same test process runs.
    card: str | None = None
    lists_processes: bool = True  # False: a driver that names no process (a container, Windows/WSL)
    asleep_bytes: int = 512 * 1024 * 1024  # what a sleeping fake engine keeps (see FAKE_VLLM_STATE_DIR)
    utilization: tuple[int, int] | None = (0, 0)  # (gpu %, memory %); None: the driver says NOT_SUPPORTED
    index: int = 0                # set by FakeNvml

    def engines(self) -> list[tuple[int, int]]:
        if not self.engine_bytes:
            return []
        import psutil

        found = []
        for proc in psutil.Process().children(recursive=True):
            try:
                argv = proc.cmdline()
                # `-m MODULE`: an engine, not a standby waiting to become one (which holds
                # no GPU memory; once it runs an engine, its title is the engine's command)
                if "-m" not in argv[:-1] or argv[argv.index("-m") + 1] not in ENGINE_MODULES:
                    continue
                environ = proc.environ()
            except psutil.Error:
                continue
            if environ.get("FAKE_NVML_CARD") != self.card:
                continue
            if str(self.index) in environ.get("CUDA_VISIBLE_DEVICES", "0").split(","):
                found.append((proc.pid, self.asleep_bytes if asleep(proc.pid, environ) else self._held(argv)))
        return found

    def _held(self, argv: list[str]) -> int:
        if self.engine_bytes != "share":
            return int(self.engine_bytes)
        flag = "--gpu-memory-utilization"
        utilization = float(argv[argv.index(flag) + 1]) if flag in argv else 0.9
        return int(self.total * utilization)


def asleep(pid: int, environ: dict[str, str]) -> bool:
    """Whether a fake engine says it sleeps (it writes FAKE_VLLM_STATE_DIR/<pid>)."""
    folder = environ.get("FAKE_VLLM_STATE_DIR")
    try:
        return bool(folder) and (Path(folder) / str(pid)).read_text() == "asleep"
    except OSError:
        return False


ENGINE_MODULES = ("tests.fakes.fake_vllm", "vllm.entrypoints.openai.api_server")


class FakeNvml:
    NVMLError = NVMLError
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND

    def __init__(self, gpus: list[FakeGpu] | None = None, *, driver: str = "575.51.02", cuda: int = 12090,
                 missing: bool = False) -> None:
        self.gpus = gpus if gpus is not None else [FakeGpu()]
        for index, gpu in enumerate(self.gpus):
            gpu.index = index
        self.driver, self.cuda, self.missing = driver, cuda, missing
        self.initialised = False
        # Each GPU's engines, listed once per reading (init to shutdown): a real driver's memory
        # figure and process list agree, read microseconds apart; listing the processes for each
        # call took long enough here for an engine that was ending to be in one and not the other.
        self._engines: dict[int, list[tuple[int, int]]] = {}

    def nvmlInit(self) -> None:
        if self.missing:
            raise NVMLError_LibraryNotFound()
        self._engines = {}
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False
        self._engines = {}

    def engines(self, gpu: FakeGpu) -> list[tuple[int, int]]:
        if not self.initialised:
            return gpu.engines()
        if gpu.index not in self._engines:
            self._engines[gpu.index] = gpu.engines()
        return self._engines[gpu.index]

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> bytes:
        return gpu.name.encode()

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        return f"GPU-{self.gpus.index(gpu):08d}"

    def nvmlDeviceGetCudaComputeCapability(self, gpu: FakeGpu) -> tuple[int, int]:
        return gpu.capability

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> SimpleNamespace:
        used = gpu.used + sum(held for _, held in self.engines(gpu))
        return SimpleNamespace(total=gpu.total, used=used, free=gpu.total - used)

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> SimpleNamespace:
        if gpu.utilization is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=gpu.utilization[0], memory=gpu.utilization[1])

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[SimpleNamespace]:
        if not gpu.lists_processes:
            return []
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in [*gpu.compute, *self.engines(gpu)]]

    def nvmlDeviceGetGraphicsRunningProcesses(self, gpu: FakeGpu) -> list[SimpleNamespace]:
        if not gpu.lists_processes:
            return []
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.graphics]

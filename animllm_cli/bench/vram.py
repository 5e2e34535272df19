"""The most VRAM the GPUs of this machine held while a bench level ran: NVML sampled in a
thread, so that the sampling never delays a request's clock on the event loop."""

from __future__ import annotations

import threading
from types import TracebackType

from animllm_cli.gpu import nvml

SAMPLE_EVERY_S = 0.2


class PeakVram:
    """`with PeakVram() as peak: ...`, then `peak.bytes`: the highest total used over all
    GPUs among the samples, or None where NVML does not answer (no GPU, the CPU build)."""

    def __init__(self, nvml_module: object | None = None, every_s: float = SAMPLE_EVERY_S) -> None:
        self.nvml_module, self.every_s = nvml_module, every_s
        self.bytes: int | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="bench-vram", daemon=True)

    def _sample(self) -> None:
        while True:
            report = nvml.probe(self.nvml_module)
            if report.error or not report.gpus:
                return
            used = sum(g.used_bytes for g in report.gpus)
            self.bytes = max(self.bytes or 0, used)
            if self._done.wait(self.every_s):
                return

    def __enter__(self) -> "PeakVram":
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._done.set()
        self._thread.join(timeout=5)

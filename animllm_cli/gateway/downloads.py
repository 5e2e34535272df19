"""A model that a request loads, downloaded by the gateway when the Hugging Face cache
lacks it: the pull `animllm pull`, `serve` and `switch` make (animllm_cli.pull), before
anything is evicted and before the engine starts, so that engine.start_timeout_s times the
start alone. Its progress is the switch's phase: in `status` and `top`, in the comments of
the streams waiting for it, and in the gateway's log.

It runs in a thread. What bounds it is huggingface_hub's own: a transfer that receives
nothing for HF_HUB_DOWNLOAD_TIMEOUT seconds is retried a few times, then fails; one that
makes progress goes on. A stopping gateway ends it at its next write (the partial file is
kept: the next pull resumes it)."""

from __future__ import annotations

import logging
import time
from typing import Callable

from animllm_cli.config import LoadedConfig
from animllm_cli.engine.supervisor import Progress
from animllm_cli.errors import AnimllmError
from animllm_cli.pull import ModelPull, PulledFile, PullProgress, ensure_present
from animllm_cli.units import GIB, MIB

LOG_EVERY_S = 10.0   # the gateway's log gets a progress line this often
log = logging.getLogger(__name__)


def size(n: int) -> str:
    """Bytes in GiB, or MiB below one GiB: "4.5 GiB", "0.3 MiB"."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


class Download(PullProgress):
    """One model's pull as the gateway shows it. Written by the pulling thread, read on the
    event loop: each figure is replaced whole, never changed in place."""

    def __init__(self, model: str, on_progress: Callable[[Progress], None] | None,
                 raise_if_stopping: Callable[[], None]) -> None:
        """`on_progress`: the gateway's log of load phases; `raise_if_stopping`: raises
        when the gateway is stopping, which ends the pull at once."""
        self.model = model
        self.on_progress = on_progress
        self.raise_if_stopping = raise_if_stopping
        self.started = time.monotonic()
        self.sizes: dict[str, int] = {}     # each missing file's size
        self.on_disk: dict[str, int] = {}   # what each holds so far (a resumed one: from where it resumed)
        self.listed = False                 # the hub has said which files are missing
        self._logged_at = 0.0

    # ------------------------------------------------------------------ what it shows
    @property
    def done(self) -> str | None:
        """How far it is, "27% of 4.5 GiB"; None until the hub has listed the files (the
        pull may yet find nothing to fetch)."""
        if not self.listed:
            return None
        total, held = sum(self.sizes.values()), sum(self.on_disk.values())
        return f"{100 * held // total if total else 100}% of {size(total)}"

    @property
    def phase(self) -> str | None:
        """The switch's phase in `status` and `top`, "downloading 27% of 4.5 GiB"."""
        return None if self.done is None else f"downloading {self.done}"

    # ------------------------------------------------------------------ PullProgress (the pulling thread)
    def model_started(self, pull: ModelPull, missing: list[PulledFile]) -> None:
        self.sizes = {f.path: f.size or 0 for f in missing}
        self.listed = True
        self._log(f"downloading {pull.source} ({len(missing)} file{'s' * (len(missing) != 1)}, "
                  f"{size(sum(self.sizes.values()))}) into the Hugging Face cache")

    def file_started(self, model: str, file: PulledFile, resume_from: int) -> None:
        self.sizes = {**self.sizes, file.path: file.size or 0}  # the hub's size of it, now known for sure
        self._at(file, resume_from)

    def file_position(self, model: str, file: PulledFile, on_disk: int) -> None:
        self._at(file, on_disk)
        if time.monotonic() - self._logged_at >= LOG_EVERY_S:
            self._log(f"downloading {self.done}")

    def _at(self, file: PulledFile, on_disk: int) -> None:
        self.raise_if_stopping()
        self.on_disk = {**self.on_disk, file.path: on_disk}

    def _log(self, phase: str) -> None:
        self._logged_at = time.monotonic()
        if self.on_progress:
            self.on_progress(Progress(self.model, phase, self._logged_at - self.started, None))

    # ------------------------------------------------------------------ the pull
    def run(self, loaded: LoadedConfig) -> str | None:
        """Pull the model if the cache lacks it (blocking). Returns what was done, for the
        switch's notes; None when there was nothing to do (offline, the engine looks for
        it itself: a warning says so). A failure raises an AnimllmError naming the model,
        the cause and the way out; the gateway's log has it too."""
        try:
            pulled = ensure_present(loaded, [self.model], progress=self, warn=log.warning)
        except AnimllmError as exc:
            failed = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
            log.warning("%s", failed)
            raise AnimllmError(failed) from exc
        if not pulled or pulled[0].status != "downloaded":
            return None
        took = f"{size(pulled[0].downloaded_bytes)} in {time.monotonic() - self.started:.1f}s"
        self._log(f"downloaded {took}")
        return f"{self.model}: downloaded {took} before its start (the Hugging Face cache lacked {pulled[0].source})"

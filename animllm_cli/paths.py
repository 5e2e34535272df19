"""Where animllm keeps its files: the OS conventions, overridable for tests and power users."""

from __future__ import annotations

import os
import stat
from pathlib import Path

APP = "animllm"


def _dir(env_var: str, kind: str) -> Path:
    override = os.environ.get(env_var)
    if override:
        return Path(override).expanduser()
    import platformdirs  # imported late: only commands that touch files pay for it

    return Path(getattr(platformdirs, f"user_{kind}_dir")(APP, appauthor=False))


def config_dir() -> Path:
    return _dir("ANIMLLM_CONFIG_DIR", "config")


def state_dir() -> Path:
    return _dir("ANIMLLM_STATE_DIR", "state")


def cache_dir() -> Path:
    return _dir("ANIMLLM_CACHE_DIR", "cache")


def engine_log_dir() -> Path:
    """Where engines write their logs, one file per model (a test or the demo may use another directory)."""
    return state_dir() / "logs"


def engine_log(model: str, log_dir: Path | None = None) -> Path:
    """The log file of `model`'s engine, in `log_dir` or the state directory's logs/."""
    return (log_dir or engine_log_dir()) / f"{model}.log"


def shipped_config() -> Path:
    """The default config that ships inside the package (configs/animllm.yaml in the repo)."""
    return Path(__file__).parent / "configs" / "animllm.yaml"


# --------------------------------------------------------------------------- private files
# Logs, the state file and chat history hold prompts, answers, pids and endpoints: they
# are created 0600 in 0700 directories whatever the umask, and ones left by an older
# version with wider modes are tightened whenever they are written again.

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def _roots() -> list[Path]:
    return [state_dir(), cache_dir(), config_dir()]


def private_dir(path: Path) -> Path:
    """Create `path` if needed and make it 0700; so too each directory between it and the
    animllm directory (state, cache or config) it lies in, that directory included. A
    directory someone else owns is left as it is (a shared parent is not ours to change)."""
    path = Path(path).absolute()
    containing = [r.absolute() for r in _roots() if r.absolute() == path or r.absolute() in path.parents]
    top = min(containing, key=lambda r: len(r.parts), default=path)  # the demo's state dir lies in the cache dir
    chain = [path, *(p for p in path.parents if p == top or top in p.parents)]
    for directory in reversed(chain):  # top down, so that each mkdir finds its parent
        directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        _tighten(directory, PRIVATE_DIR_MODE)
    return path


def open_private(path: Path, mode: str = "w", **kwargs):
    """open(path, mode) for a file only its owner may read: created 0600 (never wider,
    whatever the umask), an existing file tightened to 0600, its directory made private."""
    private_dir(Path(path).parent)
    flags = os.O_CREAT | (os.O_RDWR if "+" in mode else os.O_WRONLY)
    if "w" in mode:
        flags |= os.O_TRUNC
    elif "a" in mode:
        flags |= os.O_APPEND
    elif "x" in mode:
        flags |= os.O_EXCL
    else:
        raise ValueError(f"open_private writes: mode {mode!r} needs w, a or x")
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def private_file(path: Path) -> Path:
    """Make sure `path` exists as a private file (for files another library writes,
    such as readline's history): created empty if missing, tightened to 0600."""
    open_private(path, "a").close()
    return Path(path)


def _tighten(path: Path, mode: int) -> None:
    """chmod `path` to `mode` if it is ours. Never a shared directory (sticky, as /tmp) nor
    the home directory, even when an ANIMLLM_*_DIR override names one (and we are root)."""
    try:
        info = path.stat()
        if info.st_uid != os.getuid() or info.st_mode & stat.S_ISVTX or path == Path.home().absolute():
            return
        if stat.S_IMODE(info.st_mode) != mode:
            os.chmod(path, mode)
    except (OSError, RuntimeError):
        pass  # not ours to change, or gone: the files inside are private all the same

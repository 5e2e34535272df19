"""How long `animllm --help` takes beside a bare two-command Typer app's `--help`.

Target (issue 32): at most 1.25x the bare app's. The two run in alternating pairs, so
that a busy machine slows both alike; the verdict is on the median of the pairs' ratios.
Usage: .venv/bin/python benchmarks/help_speed.py [--pairs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.25
BARE_APP = '''
import typer

app = typer.Typer()


@app.command()
def one(name: str = "x") -> None:
    """The first command."""


@app.command()
def two(count: int = 1) -> None:
    """The second command."""


app()
'''


def wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=20)
    args = parser.parse_args()
    animllm = shutil.which("animllm", path=str(Path(sys.executable).parent)) or "animllm"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "80"}
    with tempfile.TemporaryDirectory() as folder:
        bare = Path(folder) / "bare_typer_app.py"
        bare.write_text(BARE_APP)
        commands = {"animllm": [animllm, "--help"], "bare": [sys.executable, str(bare), "--help"]}
        for cmd in commands.values():  # warm the page cache and the bytecode caches
            wall(cmd, env)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for pair in range(args.pairs):
            order = list(commands) if pair % 2 == 0 else list(reversed(commands))
            for name in order:
                samples[name].append(wall(commands[name], env))
    ratios = [a / b for a, b in zip(samples["animllm"], samples["bare"])]
    ratio = statistics.median(ratios)
    print(f"{args.pairs} alternating pairs (python: {sys.executable})")
    for name, values in samples.items():
        print(f"{name + ' --help':<16} median {statistics.median(values):.3f} s  "
              f"(min {min(values):.3f}, max {max(values):.3f})")
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(f"median ratio animllm/bare {ratio:.2f}x: {verdict} the {TARGET_RATIO:.2f}x target")


if __name__ == "__main__":
    main()

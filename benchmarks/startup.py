"""How long `animllm` takes to start, beside bare Python, measured in the same run.

Target (issue 2): `animllm --help` at most 0.15 s above `python -c pass`.
Usage: .venv/bin/python benchmarks/startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 0.15


def median_wall(cmd: list[str], runs: int) -> float:
    env = {**os.environ, "NO_COLOR": "1"}
    subprocess.run(cmd, capture_output=True, env=env, check=True)  # warm the page cache
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=env, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    animllm = shutil.which("animllm", path=str(Path(sys.executable).parent)) or "animllm"
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "animllm --help": [animllm, "--help"],
        "animllm models": [animllm, "models"],
        "animllm config show coder --format args": [animllm, "config", "show", "coder", "--format", "args"],
    }
    results = {name: median_wall(cmd, args.runs) for name, cmd in cases.items()}
    base = results["python -c pass"]
    print(f"median wall time over {args.runs} runs each (python: {sys.executable})")
    print(f"{'command':<42} {'median s':>9} {'over python s':>14}")
    for name, seconds in results.items():
        print(f"{name:<42} {seconds:>9.3f} {seconds - base:>14.3f}")
    over = results["animllm --help"] - base
    verdict = "meets" if over <= TARGET_S else "MISSES"
    print(f"animllm --help is {over:.3f} s above bare Python: {verdict} the {TARGET_S:.2f} s target")


if __name__ == "__main__":
    main()

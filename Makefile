# The README's two commands: `make run` (the main job) and `make test`.
.PHONY: setup run test bench-startup

setup:
	@scripts/setup.sh

# The main job on a machine without a GPU: the whole flow on the CPU build of vLLM.
run: setup
	.venv/bin/animllm demo

# The fast tiers on both cores (pytest-xdist), then the real-engine tier alone and in
# order; both run whatever the first gives, and either failing fails the target.
test: setup
	.venv/bin/python -m pytest -m "not engine and not vllm" -n 2; fast=$$?; \
	.venv/bin/python -m pytest -m "engine or vllm" --durations=5; engine=$$?; \
	test $$fast -eq 0 && test $$engine -eq 0

bench-startup: setup
	.venv/bin/python benchmarks/startup.py

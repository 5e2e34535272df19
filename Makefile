# The README's two commands: `make run` (the main job) and `make test`.
.PHONY: setup run test bench-startup

setup:
	@scripts/setup.sh

# Until `animllm demo` exists: what is configured, and the exact engine command for the default model.
run: setup
	.venv/bin/animllm models
	.venv/bin/animllm config show --format args

test: setup
	.venv/bin/python -m pytest

bench-startup: setup
	.venv/bin/python benchmarks/startup.py

# The README's two commands: `make run` (the main job) and `make test`.
.PHONY: setup run test bench-startup

setup:
	@scripts/setup.sh

# Until `animllm demo` exists: the checklist (its GPU rows FAIL on a machine without one,
# which is expected there and not an error of `make run`), the plan, and the engine command.
run: setup
	-.venv/bin/animllm doctor
	.venv/bin/animllm plan
	.venv/bin/animllm config show --format args

test: setup
	.venv/bin/python -m pytest

bench-startup: setup
	.venv/bin/python benchmarks/startup.py

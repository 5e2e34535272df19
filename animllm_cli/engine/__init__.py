"""The vLLM process supervisor: launch, readiness, log, diagnosis, liveness and teardown."""

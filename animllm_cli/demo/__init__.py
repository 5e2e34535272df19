"""The demo: tiny local models that real vLLM (its CPU build) can load, for `animllm demo` and the tests."""

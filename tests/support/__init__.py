"""What the tests run on, in one place:

- helpers: the CLI runner, config writers (the tiny models' config), free ports, paths;
- waiting: `wait_until(condition, bound, what)`, the one way a test waits;
- environment: each test's own dirs and environment; vLLM required under CI=true;
- gateways: a real gateway in a thread over fake (or real) engines, a fake vLLM as a
  remote server, the product's bounds for a start and a stop, the bench's gateway;
- fake_engines: one fake engine under the product's supervisor;
- real_engines: real vLLM run from a command line; vllm_argv_check.py asks its parser;
- shared_engines: the engine tier's shared gateway (tiny-a and tiny-b, started once);
- engine_starts: the count of real engine starts and its budget;
- saved_runs: bench results as `bench --json` writes them.
"""

"""A fake vLLM server for failure injection. Run as the engine module
(`engine: {module: tests.fakes.fake_vllm}`); it takes vLLM's arguments and behaves as
FAKE_VLLM_MODE says:

  ok              start in ~1 s through vLLM's log lines, serve /health and /v1/models
  crash           print a traceback while loading and exit 1
  kv-oom          print vLLM's "estimated maximum model length" error and exit 1
  free-memory     print vLLM's "Free memory on device ... less than desired" error and exit 1
  not-found       print a Hugging Face "Repository Not Found" error and exit 1
  stall           print a few lines, then nothing, forever
  ignore-term     like ok, but ignore SIGTERM
  grandchild      fork a grandchild that keeps the output pipe open, then crash
  die-after-ready become ready, then exit after FAKE_VLLM_AFTER seconds
  sick-after-ready become ready, then answer /health with 503 after FAKE_VLLM_AFTER seconds
  slow            like ok, but take FAKE_VLLM_AFTER seconds to get ready
  fork-ready      like ok, with a worker child process (as EngineCore) in the same group
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def say(line: str) -> None:
    print(f"(APIServer pid={os.getpid()}) INFO {line}", flush=True)


class Handler(BaseHTTPRequestHandler):
    sick_at: float | None = None
    names: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/health":
            sick = Handler.sick_at is not None and time.monotonic() >= Handler.sick_at
            self._send(503 if sick else 200, b"")
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [{"id": n, "object": "model"} for n in self.names]}).encode())
        else:
            self._send(404, b"{}")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    say("Starting vLLM server on http://127.0.0.1:%d" % port)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--port", type=int)
    parser.add_argument("--host")
    parser.add_argument("--served-model-name", nargs="+", default=[])
    args, _ = parser.parse_known_args()
    mode = os.environ.get("FAKE_VLLM_MODE", "ok")
    after = float(os.environ.get("FAKE_VLLM_AFTER", "1"))
    Handler.names = args.served_model_name or [args.model]

    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    say(f"non-default args: {{'model': '{args.model}', 'port': {args.port}}}")
    say(f"Starting to load model {args.model}...")
    if mode == "crash":
        print("Traceback (most recent call last):\n  File \"loader.py\", line 1\nRuntimeError: weights are corrupt",
              flush=True)
        sys.exit(1)
    if mode == "kv-oom":
        print("(EngineCore pid=1) ERROR ValueError: To serve at least one request with the model's max seq len "
              "(32768), (6.00 GiB KV cache is needed, which is larger than the available KV cache memory (3.50 GiB). "
              "Based on the available memory, the estimated maximum model length is 19104. Try increasing "
              "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.", flush=True)
        sys.exit(1)
    if mode == "free-memory":
        print("ValueError: Free memory on device cuda:0 (10.5/15.92 GiB) on startup is less than desired GPU memory "
              "utilization (0.9, 14.33 GiB). Decrease GPU memory utilization or reduce GPU memory used by other "
              "processes.", flush=True)
        sys.exit(1)
    if mode == "not-found":
        print("huggingface_hub.errors.RepositoryNotFoundError: 404 Client Error. Repository Not Found for url: "
              f"https://huggingface.co/api/models/{args.model}", flush=True)
        sys.exit(1)
    if mode == "stall":
        time.sleep(3600)
    if mode == "grandchild":
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # inherits stdout
        print("RuntimeError: lost the grandchild", flush=True)
        sys.exit(1)
    if mode == "fork-ready":
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    time.sleep(after if mode == "slow" else 0.3)
    say("Loading weights took 0.01 seconds")
    say("init engine (profile, create kv cache, warmup model) took 0.1 s")
    if mode == "die-after-ready":
        threading.Timer(after, lambda: os._exit(3)).start()
    if mode == "sick-after-ready":
        Handler.sick_at = time.monotonic() + after
    serve(args.port)


if __name__ == "__main__":
    main()

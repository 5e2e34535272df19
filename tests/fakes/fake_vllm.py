"""A fake vLLM server for failure injection and for measuring the gateway against a fast
upstream. Run as the engine module (`engine: {module: tests.fakes.fake_vllm}`); it takes
vLLM's arguments and behaves as FAKE_VLLM_MODE says:

  ok               start in ~0.3 s through vLLM's log lines; serve /health, /v1/models,
                   /metrics and OpenAI completions (answers name the served model)
  crash            print a traceback while loading and exit 1
  kv-oom           print vLLM's "estimated maximum model length" error and exit 1
  free-memory      print vLLM's "Free memory on device ... less than desired" error and exit 1
  not-found        print a Hugging Face "Repository Not Found" error and exit 1
  stall            print a few lines, then nothing, forever
  ignore-term      like ok, but ignore SIGTERM
  grandchild       fork a grandchild that keeps the output pipe open, then crash
  die-after-ready  become ready, then exit after FAKE_VLLM_AFTER seconds
  sick-after-ready become ready, then answer /health with 503 after FAKE_VLLM_AFTER seconds, and
                   completions with vLLM's 500 for a dead EngineCore
  hang-after-ready become ready, then hang after FAKE_VLLM_AFTER seconds: nothing answers
                   (not /health, not a stream) and SIGTERM is never handled
  slow             like ok, but take FAKE_VLLM_AFTER seconds to get ready
  fork-ready       like ok, with a worker child process in the same group, named as vLLM names
                   its EngineCore (EngineCore), before ready
  helper-ready     like fork-ready, with also a helper child that is neither an EngineCore nor a
                   worker (as vLLM's multiprocessing resource tracker, which may exit on its own)
  die-mid-stream   like ok, but exit after FAKE_VLLM_AFTER streamed chunks
  die-mid-event    like die-mid-stream, but write half an event first (a crash inside a write)
  hold-mid-stream  like ok, but a stream sends FAKE_VLLM_AFTER chunks, then nothing more and
                   never ends: the answer is open, unfinished, until the process is killed
  ignores-key      like ok, but answers /v1 without checking VLLM_API_KEY (an impostor on the port)

Sleep mode, as the installed vLLM defines it (tests/real_engine/test_fake_sleep_routes.py reads
vLLM's source to keep the two alike): with VLLM_SERVER_DEV_MODE=1 the development routes
exist (POST /sleep?level=&mode=, POST /wake_up?tags=, GET /is_sleeping, POST
/release_kv_cache_memory, POST /collective_rpc, POST /reset_prefix_cache); sleeping needs
--enable-sleep-mode. FAKE_VLLM_SLEEP_S / FAKE_VLLM_WAKE_S: how long a sleep and a wake take;
FAKE_VLLM_WAKE_FAIL=1: a wake fails with CUDA's out-of-memory error; FAKE_VLLM_SLEEP_FAIL=1: a sleep fails; FAKE_VLLM_STATE_DIR: where
it writes whether it sleeps (file named by its pid), for the fake NVML. Asleep, it refuses
completions (503): a request that reaches a sleeper is a bug of the gateway.

Other knobs: FAKE_VLLM_ALLOCATE=torch (hold --gpu-memory-utilization of the visible GPU,
for scripts/gpu_check.py), FAKE_VLLM_CRASH_MODELS (the --model values that crash whatever the mode),
FAKE_VLLM_SLOW_MODELS (the --model values that start as `slow` does, whatever the mode), FAKE_VLLM_GO_DIR
(a slow start also ends as soon as a file named as the last part of its --model exists there:
a test lets it become ready once it has seen what happens meanwhile),
FAKE_VLLM_CHUNK_DELAY (seconds between streamed chunks), FAKE_VLLM_KV
(the KV cache usage reported on /metrics), FAKE_VLLM_LOG (a file that records each
request's model and whether the client went away). Whatever the mode, a completion whose body
carries `"fake_lose_core": true` makes the engine sick from then on, as sick-after-ready
(its EngineCore lost, as vLLM's to an out-of-memory on a big prompt), that request's answer
included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time


def say(line: str) -> None:
    print(f"(APIServer pid={os.getpid()}) INFO {line}", flush=True)


def record(entry: dict) -> None:
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")


def make_app(names: list[str], mode: str, after: float):
    from aiohttp import web

    from tests.fakes.fake_apis import api_routes

    # "After ready" counts from the supervisor's last readiness step (its keyed /v1/models),
    # not from start-up, so that a slow machine cannot make the engine fail before it is ready.
    ready_at: list[float] = []

    def became_ready() -> None:
        ready_at.append(time.monotonic())
        if mode == "die-after-ready":
            threading.Timer(after, lambda: os._exit(3)).start()
        if mode == "hang-after-ready":  # the event loop blocks: its SIGTERM handler never runs either
            asyncio.get_running_loop().call_later(after, time.sleep, 3600)
    delay = float(os.environ.get("FAKE_VLLM_CHUNK_DELAY", "0"))
    kv = os.environ.get("FAKE_VLLM_KV", "0.1")

    core_lost: list[bool] = []  # a request carried "fake_lose_core"

    def sick() -> bool:
        expired = mode == "sick-after-ready" and bool(ready_at) and time.monotonic() >= ready_at[0] + after
        return expired or bool(core_lost)

    async def health(request):
        return web.Response(status=503 if sick() else 200)

    async def models(request):
        if not ready_at:
            became_ready()
        return web.json_response({"object": "list", "data": [{"id": n, "object": "model"} for n in names]})

    # What vLLM's own /metrics says of the requests it runs and the tokens it generated
    # (`animllm top` computes tokens/s from the counter).
    counts = {"running": 0, "generated": 0}

    async def metrics(request):
        label = f'{{model_name="{names[0]}"}}'
        return web.Response(text=f"# TYPE vllm:num_requests_running gauge\n"
                                 f"vllm:num_requests_running{label} {counts['running']}\n"
                                 f"# TYPE vllm:num_requests_waiting gauge\n"
                                 f"vllm:num_requests_waiting{label} 0\n"
                                 f"# TYPE vllm:kv_cache_usage_perc gauge\n"
                                 f"vllm:kv_cache_usage_perc{label} {kv}\n"
                                 f"# TYPE vllm:generation_tokens_total counter\n"
                                 f"vllm:generation_tokens_total{label} {float(counts['generated'])}\n")

    async def complete(request):
        counts["running"] += 1
        try:
            return await answer(request)
        finally:
            counts["running"] -= 1

    async def answer(request):
        body = await request.json()
        if body.get("model") not in names:
            return web.json_response({"error": {"message": f"The model `{body.get('model')}` does not exist."}},
                                     status=404)
        tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 8)
        chat = request.path.endswith("chat/completions")
        if not body.get("stream"):
            for _ in range(tokens if delay else 0):  # generate at the chunk pace; stop if the client left
                await asyncio.sleep(delay)
                if request.transport is None or request.transport.is_closing():
                    record({"model": body["model"], "stream": False, "gone": True})
                    return web.Response(status=499)
            record({"model": body["model"], "stream": False, "keys": sorted(body), "messages": body.get("messages")})
            counts["generated"] += tokens
            text = " ".join(f"t{i}" for i in range(tokens))
            choice = {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"index": 0, "text": text}
            return web.json_response({"id": "x", "object": "chat.completion", "model": names[0], "choices": [choice],
                                      "usage": {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": tokens + 3}})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        if chat and body.get("tools"):  # a call of the first tool, its arguments in pieces, as vLLM's parsers stream them
            record({"model": body["model"], "stream": True, "path": request.path, "tools": body["tools"],
                    "messages": body.get("messages"), "body": {k: v for k, v in body.items() if k != "messages"}})
            return await _tool_call(response, body["tools"][0]["function"]["name"])
        sent = 0
        try:
            for i in range(tokens):
                if mode in ("die-mid-stream", "die-mid-event") and sent >= after:
                    if mode == "die-mid-event":
                        await response.write(b'data: {"id": "x", "object": "chat.completion.ch')
                    os._exit(7)
                if mode == "hold-mid-stream" and sent >= after:
                    await asyncio.Event().wait()  # never set
                delta = {"delta": {"content": f"t{i} "}} if chat else {"text": f"t{i} "}
                event = {"id": "x", "object": "chat.completion.chunk", "model": names[0], "choices": [{"index": 0, **delta}]}
                await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                sent += 1
                counts["generated"] += 1
                if delay:
                    await asyncio.sleep(delay)
            if (body.get("stream_options") or {}).get("include_usage"):
                prompt = body.get("prompt")
                usage = {"prompt_tokens": len(prompt) if isinstance(prompt, list) else 3, "completion_tokens": sent,
                         "total_tokens": sent + 3}
                await response.write(b"data: " + json.dumps({"id": "x", "choices": [], "usage": usage}).encode() + b"\n\n")
            # Recorded before [DONE]: a client that has read the whole stream finds the record.
            record({"model": body["model"], "stream": True, "chunks": sent, "gone": False,
                    "messages": body.get("messages"), "prompt": body.get("prompt"), "path": request.path,
                    "max_tokens": tokens, "ignore_eos": body.get("ignore_eos"),
                    "body": {key: value for key, value in body.items() if key not in ("messages", "prompt")}})
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            record({"model": body["model"], "stream": True, "chunks": sent, "gone": True})
            raise
        return response

    async def _tool_call(response, name: str):
        pieces = [{"index": 0, "id": "call_fake", "type": "function", "function": {"name": name, "arguments": ""}},
                  {"index": 0, "function": {"arguments": '{"city": "Os'}}, {"index": 0, "function": {"arguments": 'lo"}'}}]
        for piece in pieces:
            event = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]}
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        end = {"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
        await response.write(b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n")
        return response

    async def tokenize(request):
        body = await request.json()
        tokens = [hash(word) % 400 for word in str(body.get("prompt", "")).split()]
        return web.json_response({"tokens": tokens, "count": len(tokens), "max_model_len": 1024})

    async def detokenize(request):
        body = await request.json()
        return web.json_response({"prompt": " ".join(f"w{token}" for token in body.get("tokens", []))})

    async def embed(request):  # a vector per input: its number and its length
        body = await request.json()
        given = body.get("input")
        inputs = given if isinstance(given, list) else [given]
        data = [{"object": "embedding", "index": i, "embedding": [float(i), float(len(str(text)))]}
                for i, text in enumerate(inputs)]
        record({"model": body.get("model"), "path": request.path, "input": given})
        return web.json_response({"object": "list", "data": data, "model": names[0],
                                  "usage": {"prompt_tokens": 2 * len(inputs), "total_tokens": 2 * len(inputs)}})

    sleeper = Sleeper("--enable-sleep-mode" in sys.argv)

    def refusal(request):
        """What the engine answers instead of an answer: sick, asleep, weights lost; None: it answers."""
        if sick():
            return web.json_response({"error": {"message": "EngineCore encountered an issue."}}, status=500)
        if sleeper.level is not None:
            return web.json_response({"error": {"message": "the engine is sleeping"}}, status=503)
        if sleeper.weights_lost:  # woken from level 2 without reload_weights: vLLM would answer garbage
            return web.json_response({"error": {"message": "weights were not reloaded after a level-2 sleep"}},
                                     status=500)
        return None

    async def complete_awake(request):
        if (await request.json()).get("fake_lose_core"):
            core_lost.append(True)
        return refusal(request) or await complete(request)

    key = None if mode == "ignores-key" else os.environ.get("VLLM_API_KEY")

    guard = middleware_guard()

    @web.middleware
    async def authenticate(request, handler):  # as vLLM does: VLLM_API_KEY guards the /v1 routes
        if key and request.path.startswith("/v1") and request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        if guard and not guard.allowed(request.path, request.headers.get("Authorization"), key):
            return web.json_response({"error": "Unauthorized"}, status=401)  # what --middleware adds
        return await handler(request)

    app = web.Application(middlewares=[authenticate])
    app.add_routes([web.get("/health", health), web.get("/v1/models", models), web.get("/metrics", metrics),
                    web.post("/v1/chat/completions", complete_awake), web.post("/v1/completions", complete_awake),
                    web.post("/v1/embeddings", embed), web.post("/tokenize", tokenize),
                    web.post("/detokenize", detokenize), *api_routes(names, record, refusal)])
    if os.environ.get("VLLM_SERVER_DEV_MODE", "0") not in ("", "0"):  # as vLLM: bool(int(...))
        app.add_routes([web.route(method, path, getattr(sleeper, handler)) for method, path, handler in DEV_ROUTES])
    return app


def middleware_guard():
    """vLLM's --middleware MODULE.NAME: the fake imports the module as vLLM would and asks
    its `allowed(path, authorization, key)`, the same decision its ASGI class makes."""
    if "--middleware" not in sys.argv:
        return None
    import importlib

    module_path = sys.argv[sys.argv.index("--middleware") + 1].rsplit(".", 1)[0]
    return importlib.import_module(module_path)


# The development routes as the installed vLLM defines them: method, path, the handler here.
DEV_ROUTES = [("POST", "/sleep", "sleep"), ("POST", "/release_kv_cache_memory", "release_kv_cache_memory"),
              ("POST", "/wake_up", "wake_up"), ("GET", "/is_sleeping", "is_sleeping"),
              ("POST", "/collective_rpc", "collective_rpc"), ("POST", "/reset_prefix_cache", "reset_prefix_cache")]
# /sleep's query parameters: name -> (default, allowed values).
SLEEP_QUERY = {"level": (1, (0, 1, 2)), "mode": ("abort", ("abort", "wait", "keep"))}


class Sleeper:
    """vLLM's sleep mode, with its answers: level 1 keeps the weights (in host RAM), level
    2 drops them, so a wake must reload them (collective_rpc reload_weights) before the KV
    cache comes back, or the engine answers garbage."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.level: int | None = None
        self.asleep_tags = {"weights", "kv_cache"}
        self.weights_lost = False

    def _mark(self) -> None:
        folder = os.environ.get("FAKE_VLLM_STATE_DIR")
        if folder:
            with open(os.path.join(folder, str(os.getpid())), "w") as handle:
                handle.write("asleep" if self.level is not None else "awake")

    @staticmethod
    def _invalid(name: str, value: str):
        from aiohttp import web

        return web.json_response({"detail": [{"type": "value_error", "loc": ["query", name], "input": value,
                                              "msg": f"Input should be valid for {name}"}]}, status=422)

    async def sleep(self, request):
        from aiohttp import web

        values = {}
        for name, (default, allowed) in SLEEP_QUERY.items():
            raw = request.query.get(name, str(default))
            value = int(raw) if isinstance(default, int) and raw.lstrip("-").isdigit() else raw
            if value not in allowed:
                return self._invalid(name, raw)
            values[name] = value
        if not self.enabled:
            say("ERROR Sleep mode is not enabled. Please compile vLLM with sleep mode enabled.")
            return web.json_response({"error": {"message": "sleep mode is not enabled"}}, status=500)
        await asyncio.sleep(float(os.environ.get("FAKE_VLLM_SLEEP_S", "0")))
        if os.environ.get("FAKE_VLLM_SLEEP_FAIL") == "1":
            say("ERROR sleep failed: CUDA error: an illegal memory access was encountered")
            return web.json_response({"error": {"message": "sleep failed"}}, status=500)
        record({"route": "/sleep", **values})
        self.level, self.asleep_tags = values["level"], {"weights", "kv_cache"}
        self.weights_lost = values["level"] == 2
        self._mark()
        return web.json_response({"status": "sleeping", "level": values["level"]})

    async def release_kv_cache_memory(self, request):
        from aiohttp import web

        return web.json_response({"status": "kv_cache_released"})

    async def wake_up(self, request):
        from aiohttp import web

        tags = request.query.getall("tags", []) or None
        if tags is None or "weights" in tags:  # FAKE_VLLM_WAKE_S is a whole wake, as published figures are
            await asyncio.sleep(float(os.environ.get("FAKE_VLLM_WAKE_S", "0")))
        record({"route": "/wake_up", "tags": tags})
        if os.environ.get("FAKE_VLLM_WAKE_FAIL") == "1":
            print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                  "capacity of 15.92 GiB of which 1.10 GiB is free.", flush=True)
            return web.json_response({"error": {"message": "CUDA out of memory"}}, status=500)
        self.asleep_tags -= set(tags or self.asleep_tags)
        if not self.asleep_tags:
            self.level = None
            self._mark()
        return web.json_response({"status": "sleeping" if self.asleep_tags else "awake", "tags": tags})

    async def is_sleeping(self, request):
        from aiohttp import web

        return web.json_response({"is_sleeping": self.level is not None})

    async def collective_rpc(self, request):
        from aiohttp import web

        body = await request.json()
        record({"route": "/collective_rpc", "method": body.get("method")})
        if body.get("method") == "reload_weights":
            self.weights_lost = False
        return web.json_response({"results": [None]})

    async def reset_prefix_cache(self, request):
        from aiohttp import web

        record({"route": "/reset_prefix_cache"})
        return web.json_response({"success": True})


HELD: list = []


def child(name: str | None) -> None:
    """A child process that sleeps, in the group; `name`: the name it takes (as vLLM's
    setproctitle names its processes), taken before this returns."""
    named = f"import ctypes; ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0); " if name else ""  # PR_SET_NAME
    started = subprocess.Popen([sys.executable, "-c", f"import time; {named}print(flush=True); time.sleep(3600)"],
                               stdout=subprocess.PIPE)
    started.stdout.readline()
    HELD.append(started)


def allocate(parser: argparse.ArgumentParser):
    """A stand-in engine on a real GPU (scripts/gpu_check.py): hold --gpu-memory-utilization
    of the card that CUDA_VISIBLE_DEVICES leaves visible, with torch, as vLLM reserves it."""
    import torch

    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    share = parser.parse_known_args()[0].gpu_memory_utilization
    total = torch.cuda.get_device_properties(0).total_memory
    held = torch.empty(int(total * share), dtype=torch.uint8, device="cuda")
    say(f"stand-in holds {held.numel() / 2**30:.2f} GiB of cuda:0 ({share} of {total / 2**30:.1f} GiB)")
    return held


def start_slowly(model: str, after: float) -> None:
    """`after` seconds, or until FAKE_VLLM_GO_DIR holds a file named as the model's last part."""
    go_dir = os.environ.get("FAKE_VLLM_GO_DIR")
    go = os.path.join(go_dir, model.rsplit("/", 1)[-1]) if go_dir else None
    deadline = time.monotonic() + after
    while time.monotonic() < deadline and not (go and os.path.exists(go)):
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--port", type=int)
    parser.add_argument("--host")
    parser.add_argument("--served-model-name", nargs="+", default=[])
    args, _ = parser.parse_known_args()
    mode = os.environ.get("FAKE_VLLM_MODE", "ok")
    if args.model in os.environ.get("FAKE_VLLM_CRASH_MODELS", "").split(","):
        mode = "crash"
    elif args.model in os.environ.get("FAKE_VLLM_SLOW_MODELS", "").split(","):
        mode = "slow"
    after = float(os.environ.get("FAKE_VLLM_AFTER", "1"))
    names = args.served_model_name or [args.model]

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
    if mode in ("fork-ready", "helper-ready"):
        child("EngineCore")
    if mode == "helper-ready":
        child(None)
    if mode == "slow":
        start_slowly(args.model, after)
    else:
        time.sleep(0.3)
    if os.environ.get("FAKE_VLLM_ALLOCATE") == "torch":
        HELD.append(allocate(parser))  # kept for the life of the process, as vLLM keeps its reservation
    say("Loading weights took 0.01 seconds")
    say("init engine (profile, create kv cache, warmup model) took 0.1 s")
    from aiohttp import web

    say(f"Starting vLLM server on http://127.0.0.1:{args.port}")
    web.run_app(make_app(names, mode, after), host="127.0.0.1", port=args.port, print=None, access_log=None,
                handle_signals=mode != "ignore-term")


if __name__ == "__main__":
    main()

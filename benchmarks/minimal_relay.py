"""The least a streaming relay can do, as a yardstick for the gateway's own cost
(benchmarks/gateway_overhead.py, kind relay-cpu): an aiohttp server that sends each POST
to one upstream with one shared client session and writes the answer back chunk by chunk
as it arrives. No auth, queue, timeouts, metrics or routing: everything the gateway does
beyond this is what the comparison prices. It runs on uvloop when that is installed, as
uvicorn (the gateway's server) does with its default loop="auto".

Usage: python benchmarks/minimal_relay.py --port P --upstream URL [--key KEY]
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web


def make_app(upstream: str, key: str | None) -> web.Application:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}

    async def open_session(app: web.Application):
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                               timeout=aiohttp.ClientTimeout(total=None))
        yield
        await app["session"].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with request.app["session"].post(f"{upstream}{request.path}", data=body, headers=headers) as answer:
            response = web.StreamResponse(status=answer.status,
                                          headers={"content-type": answer.headers.get("content-type", "text/event-stream")})
            await response.prepare(request)
            while chunk := await answer.content.readany():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(open_session)
    app.add_routes([web.post("/v1/chat/completions", relay), web.post("/v1/completions", relay)])
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--key")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        import asyncio

        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    print(f"minimal relay on {type(loop).__module__}", flush=True)
    web.run_app(make_app(args.upstream, args.key), host="127.0.0.1", port=args.port, print=None, access_log=None,
                loop=loop)


if __name__ == "__main__":
    main()

"""The reference that scripts/bench.py measures collector against: a bare aiohttp server.

`POST /v1/events` reads the body, parses it as JSON and answers 202 with
``{"accepted": N}`` (N = the array's length, else 1); nothing is stored. `GET /readyz`
and `GET /healthz` answer 200, so the bench treats it like the daemon.

By default it runs on asyncio's own event loop with the standard library's `json`:
the reference the benchmark issue names ("bare aiohttp: parse the JSON body, answer
202"). `--fast` runs it on uvloop with orjson instead, the stack collector itself uses
when they are installed, for the second comparison bench.py prints.

    python scripts/reference_server.py --port 8800 [--fast]

It serves until SIGTERM or SIGINT. Like `collector serve`, it has no access log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web


def make_app(loads: Callable[[bytes], Any], dumps: Callable[[Any], bytes]) -> web.Application:
    """The reference application, with the given JSON functions."""

    async def post_events(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            value = loads(body)
        except ValueError:  # json.JSONDecodeError and orjson.JSONDecodeError both are
            return web.Response(body=dumps({"error": "invalid_json"}), status=400,
                                content_type="application/json")
        accepted = len(value) if isinstance(value, list) else 1
        return web.Response(body=dumps({"accepted": accepted}), status=202,
                            content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(body=dumps({"status": "ready"}), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/healthz", ready)
    return app


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve `app` until SIGTERM/SIGINT."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def _stdlib_dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bare aiohttp reference server for bench.py")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fast", action="store_true",
                        help="uvloop + orjson instead of asyncio's loop + stdlib json")
    args = parser.parse_args(argv)
    if not args.fast:
        asyncio.run(serve(make_app(json.loads, _stdlib_dumps), args.host, args.port))
        return 0
    try:
        import orjson
        import uvloop
    except ImportError as exc:
        print(f"reference_server: --fast needs uvloop and orjson: {exc}", file=sys.stderr)
        return 2
    app = make_app(orjson.loads, orjson.dumps)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(app, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An HTTP proxy on 127.0.0.1 that sits between the job and the S3 server and fails a fraction of
requests: a 503 SlowDown, a connection reset before the request reaches S3, or a reset after S3
has handled it (the response is lost; the client cannot tell whether its write happened).

    python -m tests.fault_proxy --port P --upstream http://127.0.0.1:Q --stats FILE
        [--slowdown 0.08] [--reset-before 0.04] [--reset-after 0.02] [--seed 0]

Counts of requests and injected faults are written to FILE (JSON) after every request.
"""

import argparse
import asyncio
import json
import random
from pathlib import Path

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host", "content-length"}
_SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message></Error>')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--slowdown", type=float, default=0.08)
    parser.add_argument("--reset-before", type=float, default=0.04)
    parser.add_argument("--reset-after", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args))


async def serve(args) -> None:
    import aiohttp
    from aiohttp import web

    rng = random.Random(args.seed)
    stats = {"requests": 0, "slowdown": 0, "reset_before": 0, "reset_after": 0, "by_method": {}}
    stats_path = Path(args.stats)

    def record(kind=None, method=None):
        stats["requests"] += 1
        if kind:
            stats[kind] += 1
        if method:
            stats["by_method"][method] = stats["by_method"].get(method, 0) + 1
        stats_path.write_text(json.dumps(stats))

    session = aiohttp.ClientSession(auto_decompress=False)

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        draw = rng.random()
        if draw < args.slowdown:
            record("slowdown", request.method)
            return web.Response(status=503, body=_SLOWDOWN, content_type="application/xml")
        if draw < args.slowdown + args.reset_before:
            record("reset_before", request.method)
            request.transport.abort()
            raise asyncio.CancelledError
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with session.request(request.method, args.upstream + request.rel_url.raw_path_qs, headers=headers,
                                   data=body, allow_redirects=False) as upstream:
            payload = await upstream.read()
            if draw < args.slowdown + args.reset_before + args.reset_after:
                record("reset_after", request.method)
                request.transport.abort()
                raise asyncio.CancelledError
            record(None, request.method)
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            if request.method == "HEAD" and "Content-Length" in upstream.headers:
                # a HEAD's length is the object's, not the (empty) body's
                out_headers["Content-Length"] = upstream.headers["Content-Length"]
                return web.Response(status=upstream.status, headers=out_headers)
            return web.Response(status=upstream.status, body=payload, headers=out_headers)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    stats_path.write_text(json.dumps(stats))
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()

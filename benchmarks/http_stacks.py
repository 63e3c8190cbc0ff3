"""Which HTTP stack for pysonic's KServe v2 REST frontend: the same echo /infer on each candidate.

Each candidate serves ``POST /v2/models/echo/infer`` doing the same work: read the body, parse the
JSON header (``Inference-Header-Content-Length`` when binary sections follow), view the binary
input with ``np.frombuffer`` and answer it back as a binary output (Triton's binary tensor
extension). Candidates, each in its own process on uvloop (as ``pysonic serve`` runs):

  * ``asgi``      a raw ASGI callable under uvicorn (httptools parser, no framework);
  * ``starlette`` the same handler as a Starlette route under uvicorn (httptools);
  * ``aiohttp``   aiohttp's web server (its own C parser), ``AppRunner`` + ``TCPSite``;
  * ``protocol``  the floor: a bare ``asyncio.Protocol`` over httptools (keep-alive only, no
    chunked bodies, no flow control; not a candidate, it shows what the frameworks cost).

The load is tritonclient.http's ``infer`` in a closed loop (``--concurrency`` workers, each with
one request in flight; 8 by default) from this process, on the same cores as the server: with
the asyncio client (``aio``: tasks on uvloop, aiohttp underneath) and the synchronous one
(``sync``: greenlets on its geventhttpclient pool). On a small machine the client is the
bottleneck, so the table also shows the server process's CPU time per request (from /proc, warm-up
included): the number that does not depend on how fast the client is. Rounds interleave the stacks
so machine drift hits each alike; the table shows medians over rounds.

Needs ``tritonclient[http]`` (brings aiohttp) and ``starlette`` for that candidate.

    python benchmarks/http_stacks.py --quick               # ~30 s
    python benchmarks/http_stacks.py --seconds 4 --rounds 3 --json out/http_stacks.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _proc import cpu_seconds

STACKS = ("asgi", "starlette", "aiohttp", "protocol")
ROUTE = "/v2/models/echo/infer"


# ---------------------------------------------------------------------- the shared echo work
def echo(body: bytes, header_length: int | None) -> tuple[bytes, int]:
    """The response body and its JSON header's length for one echo request."""
    n = len(body) if header_length is None else header_length
    header = json.loads(body[:n])
    view = memoryview(body)[n:]
    out = []
    parts: list[Any] = [b""]
    pos = 0
    for t in header["inputs"]:
        size = t["parameters"]["binary_data_size"]
        arr = np.frombuffer(view[pos : pos + size], np.float32)
        pos += size
        out.append(
            {
                "name": "OUTPUT0",
                "datatype": t["datatype"],
                "shape": t["shape"],
                "parameters": {"binary_data_size": arr.nbytes},
            }
        )
        parts.append(memoryview(arr).cast("B"))
    head = json.dumps({"model_name": "echo", "model_version": "1", "outputs": out}).encode()
    parts[0] = head
    return b"".join(parts), len(head)


# ---------------------------------------------------------------------- candidates
def asgi_app() -> Any:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        hlen = None
        for k, v in scope["headers"]:
            if k == b"inference-header-content-length":
                hlen = int(v)
        body, n = echo(b"".join(chunks), hlen)
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(n).encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request: Request) -> Response:
        hlen = request.headers.get("inference-header-content-length")
        body, n = echo(await request.body(), int(hlen) if hlen else None)
        return Response(
            body,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(n)},
        )

    return Starlette(routes=[Route(ROUTE, infer, methods=["POST"])])


async def serve_uvicorn(app: Any, port_file: Path) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http="httptools",
        lifespan="off",
        proxy_headers=False,
        log_config=None,
        access_log=False,
        server_header=False,
    )  # fmt: skip (the settings of pysonic.server.http.listener)
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)  # what serve() sets up before startup()
    await server.startup()
    port = server.servers[0].sockets[0].getsockname()[1]
    port_file.write_text(str(port))
    await asyncio.Event().wait()


async def serve_aiohttp(port_file: Path) -> None:
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        hlen = request.headers.get("Inference-Header-Content-Length")
        body, n = echo(await request.read(), int(hlen) if hlen else None)
        return web.Response(
            body=body,
            content_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(n)},
        )

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post(ROUTE, infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    port_file.write_text(str(port))
    await asyncio.Event().wait()


class _EchoProtocol(asyncio.Protocol):
    """The floor: httptools callbacks straight into ``echo`` (keep-alive, Content-Length only)."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers, self.chunks = {}, []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        hlen = self.headers.get(b"inference-header-content-length")
        body, n = echo(b"".join(self.chunks), int(hlen) if hlen else None)
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
            b"inference-header-content-length: %d\r\ncontent-length: %d\r\n\r\n" % (n, len(body))
        )
        self.transport.write(head + body)


async def serve_protocol(port_file: Path) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_EchoProtocol, "127.0.0.1", 0)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))
    await asyncio.Event().wait()


def serve(stack: str, port_file: Path) -> None:
    import uvloop

    if stack == "asgi":
        uvloop.run(serve_uvicorn(asgi_app(), port_file))
    elif stack == "starlette":
        uvloop.run(serve_uvicorn(starlette_app(), port_file))
    elif stack == "aiohttp":
        uvloop.run(serve_aiohttp(port_file))
    else:
        uvloop.run(serve_protocol(port_file))


# ---------------------------------------------------------------------- load
async def closed_loop(url: str, concurrency: int, seconds: float, warmup: float) -> dict:
    import tritonclient.http.aio as httpclient

    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    latencies: list[float] = []
    count = [0]
    async with httpclient.InferenceServerClient(url, conn_limit=concurrency) as client:
        inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(x)
        got = (await client.infer("echo", [inp])).as_numpy("OUTPUT0")
        assert np.array_equal(got, x), "the echo is wrong"
        start = time.perf_counter()
        t_measure = start + warmup
        t_end = t_measure + seconds

        async def worker() -> None:
            while (t0 := time.perf_counter()) < t_end:
                await client.infer("echo", [inp])
                count[0] += 1
                if t0 >= t_measure:
                    latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _summary(latencies, seconds, count[0])


def closed_loop_sync(url: str, concurrency: int, seconds: float, warmup: float) -> dict:
    """The same loop with tritonclient.http's synchronous client: greenlets on its gevent pool."""
    import gevent
    import tritonclient.http as httpclient

    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    latencies: list[float] = []
    count = [0]
    client = httpclient.InferenceServerClient(url, concurrency=concurrency)
    try:
        inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(x)
        assert np.array_equal(client.infer("echo", [inp]).as_numpy("OUTPUT0"), x)
        t_measure = time.perf_counter() + warmup
        t_end = t_measure + seconds

        def worker() -> None:
            while (t0 := time.perf_counter()) < t_end:
                client.infer("echo", [inp])
                count[0] += 1
                if t0 >= t_measure:
                    latencies.append(time.perf_counter() - t0)

        gevent.joinall([gevent.spawn(worker) for _ in range(concurrency)], raise_error=True)
    finally:
        client.close()
    return _summary(latencies, seconds, count[0])


def _summary(latencies: list[float], seconds: float, total: int) -> dict:
    lat = np.array(latencies) * 1e6
    return {
        "total_requests": total,
        "requests_per_s": len(lat) / seconds,
        "p50_us": float(np.percentile(lat, 50)),
        "p99_us": float(np.percentile(lat, 99)),
    }


def measure(stack: str, client: str, concurrency: int, seconds: float, warmup: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", stack, "--port-file", str(port_file)]
        )
        try:
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    msg = f"{stack} server did not start"
                    raise RuntimeError(msg)
                time.sleep(0.02)  # polling the port file, bounded by the deadline
            url = f"127.0.0.1:{port_file.read_text()}"
            cpu0 = cpu_seconds(proc.pid)
            if client == "sync":
                result = closed_loop_sync(url, concurrency, seconds, warmup)
            else:
                import uvloop

                result = uvloop.run(closed_loop(url, concurrency, seconds, warmup))
            # the server's CPU per request (warm-up included): what the client's speed hides
            cpu = cpu_seconds(proc.pid) - cpu0
            result["server_cpu_us"] = 1e6 * cpu / max(result.pop("total_requests"), 1)
            return result
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("--clients", default="aio,sync", help="tritonclient.http aio and/or sync")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1.5 s windows, 2 rounds")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port_file)
        return
    if args.quick:
        args.seconds, args.rounds = 1.5, 2
    stacks = [s for s in args.stacks.split(",") if s]
    clients = [c for c in args.clients.split(",") if c]
    runs: dict[tuple[str, str], list[dict]] = {(s, c): [] for s in stacks for c in clients}
    for r in range(args.rounds):
        for s in stacks:
            for c in clients:
                w = measure(s, c, args.concurrency, args.seconds, args.warmup)
                runs[(s, c)].append(w)
                print(
                    f"round {r + 1} {s:<10} {c:<5} {w['requests_per_s']:8.0f} req/s "
                    f"{w['server_cpu_us']:6.0f} us server CPU/request",
                    flush=True,
                )
    print(
        f"\nHTTP stacks, echo /infer (1x16 FP32, binary), tritonclient.http, concurrency "
        f"{args.concurrency}, median of {args.rounds} x {args.seconds:g} s windows, "
        f"{os.cpu_count()} cores shared by client and server\n"
    )
    columns = ("req/s", "p50 us", "p99 us")
    print(f"| {'stack':<10} | client | " + " | ".join(f"{c:>6}" for c in columns), end="")
    print(" | server CPU us/req |")
    print(f"|{'-' * 12}|--------|{'-' * 7}:|{'-' * 7}:|{'-' * 7}:|------------------:|")
    summary = {}
    for (s, c), windows in runs.items():
        med = {k: statistics.median(w[k] for w in windows) for k in windows[0]}
        summary[f"{s}/{c}"] = {"median": med, "rounds": windows}
        print(
            f"| {s:<10} | {c:<6} | {med['requests_per_s']:6.0f} | {med['p50_us']:6.0f} "
            f"| {med['p99_us']:6.0f} | {med['server_cpu_us']:17.0f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"args": {k: str(v) for k, v in vars(args).items()}, "results": summary}
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()

"""Serve the HTTP app with uvicorn (httptools parser) on the server's own event loop.

uvicorn brings a well-tested HTTP/1.1 connection layer (keep-alive, pipelining, chunked bodies,
``Expect: 100-continue``, flow control, graceful connection shutdown); pysonic binds the socket
itself (port 0 picks a free one; no ``SO_REUSEPORT``, so a taken port is an error at startup)
and runs ``uvicorn.Server.serve`` as a task next to grpc.aio. uvicorn's own signal handling is
switched off: the pysonic server owns SIGINT/SIGTERM and stops this listener in its shutdown
sequence (readiness false first, then in-flight requests finish within the grace period).

Example::

    listener = HttpListener(HttpApp(core, state), "127.0.0.1", 0)
    port = await listener.start()
    ...
    await listener.stop(grace=30)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import uvicorn

__all__ = ["HttpListener"]

#: Idle keep-alive connections are closed after this many seconds.
KEEP_ALIVE_S = 75


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its signal handlers, telling when it has started."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the pysonic Server handles signals and calls HttpListener.stop

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class HttpListener:
    """One HTTP listener for an ASGI app: ``start`` binds and serves, ``stop`` drains."""

    def __init__(
        self, app: Any, host: str, port: int, *, ssl: Mapping[str, Any] | None = None
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        #: uvicorn's ``ssl_*`` settings (HTTPS), e.g. from :meth:`ServerTLS.uvicorn_options`
        self.ssl = dict(ssl or {})
        self._server: _EmbeddedUvicorn | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind (raises OSError if the port is taken) and serve; returns the bound port."""
        sock = _bind(self.host, self.port)
        config = uvicorn.Config(
            self.app,
            http="httptools",
            ws="none",
            lifespan="off",
            interface="asgi3",
            proxy_headers=False,
            server_header=False,
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=KEEP_ALIVE_S,
            **self.ssl,
        )
        server = _EmbeddedUvicorn(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="pysonic-http")
        started = asyncio.create_task(server.ready.wait())
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            started.cancel()
            sock.close()
            await task  # re-raises what stopped uvicorn from starting
            msg = "the HTTP listener stopped during startup"
            raise OSError(msg)
        self._server, self._task = server, task
        self.port = sock.getsockname()[1]
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish within ``grace`` seconds, close."""
        if self._server is None or self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = max(grace, 0.1)  # type: ignore[assignment]
        self._server.should_exit = True
        await self._task
        self._server = self._task = None


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (IPv4 or IPv6), ``SO_REUSEADDR`` (no
    ``SO_REUSEPORT``) and ``TCP_NODELAY``."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit TCP_NODELAY on Linux. Without it a response written in
        # two parts (head, then body) waits for the client's delayed ACK: measured 40 ms per
        # request with aiohttp clients when the loop does not set it on each connection.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock

"""A pysonic server on a private event-loop thread, for synchronous callers.

The demo, benchmarks, tests and (later) the client's local fallback start a real server inside
their own process without owning an event loop. Startup errors propagate to the caller.

Example::

    with EmbeddedServer(ServerOptions(model_repository=repo, grpc_port=0)) as server:
        client = tritonclient.grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from types import TracebackType

from pysonic._loop import new_event_loop
from pysonic.server.app import Server, ServerOptions

__all__ = ["EmbeddedServer"]


class EmbeddedServer:
    """Run :class:`Server` on a background thread with its own asyncio loop."""

    def __init__(self, options: ServerOptions, *, start_timeout: float = 120.0) -> None:
        self.server = Server(options)
        self._start_timeout = start_timeout
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._run, name="pysonic-embedded", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> EmbeddedServer:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.server.start(), self._loop)
        try:
            fut.result(self._start_timeout)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
            raise
        return self

    def stop(self, grace: float | None = None) -> None:
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop)
        try:
            fut.result(self.server.options.drain_timeout + 30)
        except concurrent.futures.TimeoutError:
            pass
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    @property
    def grpc_port(self) -> int:
        return self.server.grpc_port

    @property
    def http_port(self) -> int:
        return self.server.http_port

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.server.http_port}"

    @property
    def metrics_port(self) -> int:
        return self.server.metrics_port

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

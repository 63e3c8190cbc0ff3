"""The last resort: an embedded local pysonic server, started on first need.

When no remote server can serve a call and the site allows it, the client starts
``python -m pysonic serve`` as a subprocess on 127.0.0.1 (free port, explicit model control, the
site's model repository, the local CPU), loads the models it is asked for, reuses it for the rest
of the process, and stops it at close or at interpreter exit. Starting never blocks the event
loop: the subprocess is spawned with asyncio and its log is polled with a deadline.

Example::

    local = LocalFallback(Path("/cvmfs/.../model_repository"))
    response = await local.infer(request)
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from tritonclient.grpc import model_config_pb2, service_pb2

from pysonic.client._transport import AsyncTransport, GrpcTransport
from pysonic.errors import UnavailableError
from pysonic.protocol.types import InferRequest, InferResponse

__all__ = ["LocalFallback"]

log = logging.getLogger("pysonic.client")
_PORT = re.compile(r"gRPC on 127\.0\.0\.1:(\d+)")


class LocalFallback(AsyncTransport):
    """A pysonic server subprocess on this host, started lazily."""

    def __init__(self, model_repository: Path, *, start_timeout: float = 120.0) -> None:
        self.model_repository = Path(model_repository)
        self.start_timeout = start_timeout
        self.name = "local-fallback"
        self.process: asyncio.subprocess.Process | None = None
        self.transport: GrpcTransport | None = None
        self._loaded: set[str] = set()
        self._lock = asyncio.Lock()
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
            "w+", prefix="pysonic-fallback-", suffix=".log", delete=False
        )
        atexit.register(self._kill)

    async def _start(self) -> GrpcTransport:
        if not self.model_repository.is_dir():
            msg = f"local fallback: model repository {self.model_repository} does not exist"
            raise UnavailableError(msg)
        log.warning("starting the local fallback server on %s", self.model_repository)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pysonic",
            "serve",
            "--model-repository",
            str(self.model_repository),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--model-control-mode",
            "explicit",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self._log,
            env={**os.environ, "COLUMNS": "250"},
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            text = Path(self._log.name).read_text()
            match = _PORT.search(text)
            if match:
                self.transport = GrpcTransport(f"127.0.0.1:{match.group(1)}")
                return self.transport
            if self.process.returncode is not None:
                break
            await asyncio.sleep(0.05)  # polling the log, bounded by the deadline
        self._kill()
        tail = Path(self._log.name).read_text()[-2000:]
        msg = f"local fallback server did not start:\n{tail}"
        raise UnavailableError(msg)

    async def _ensure(self, model: str) -> GrpcTransport:
        async with self._lock:
            transport = self.transport or await self._start()
            if model not in self._loaded:
                await transport.load_model(model)
                self._loaded.add(model)
            return transport

    async def infer(
        self,
        request: InferRequest,
        *,
        timeout: float | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> InferResponse:
        transport = await self._ensure(request.model_name)
        return await transport.infer(request, timeout=timeout)

    async def model_config(self, model: str, version: str = "") -> model_config_pb2.ModelConfig:
        return await (await self._ensure(model)).model_config(model, version)

    async def model_statistics(
        self, model: str, version: str = ""
    ) -> list[service_pb2.ModelStatistics]:
        return await (await self._ensure(model)).model_statistics(model, version)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def _kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()

    async def close(self) -> None:
        if self.transport is not None:
            await self.transport.close()
            self.transport = None
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)
        atexit.unregister(self._kill)

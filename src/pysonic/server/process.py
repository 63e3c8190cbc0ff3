"""A ``pysonic serve`` subprocess on this host, for callers that want a real local server.

A local server in its own process shares the CPU with the job but not the job's GIL, exactly like
a server next to a CMSSW job; the demo, benchmarks and tests use it where that matters. The
process listens on 127.0.0.1 with free ports; the chosen gRPC port is read from the line the
server logs once it is ready (polled with a deadline, never a fixed sleep).

Example::

    with ServerProcess(Path("model_repository"), models=["particlenet_lite"]) as server:
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["ServerProcess"]

#: logged once every requested model is loaded and readiness is true
_GRPC = re.compile(r"serving \d+ model\(s\): gRPC on 127\.0\.0\.1:(\d+)")
_HTTP = re.compile(r", HTTP on 127\.0\.0\.1:(\d+)")
_METRICS = re.compile(r", metrics on 127\.0\.0\.1:(\d+)")


class ServerProcess:
    """Start ``python -m pysonic serve`` on ``repository`` (explicit control, ``models`` loaded)."""

    def __init__(
        self,
        repository: Path,
        *,
        models: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        start_timeout: float = 120.0,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        detach: bool = False,
    ) -> None:
        self.repository = Path(repository)
        self.models = list(models)
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.env = env
        self.grpc_port: int | None = None
        #: set when ``extra_args`` ask for HTTP (``--http-port 0``)
        self.http_port: int | None = None
        #: the Prometheus /metrics port (free, chosen by the server; None with --no-allow-metrics)
        self.metrics_port: int | None = None
        #: ``detach``: the server gets its own session, so it outlives the caller (``pysonic
        #: cluster up`` returns while its servers run; ``down`` stops them by pid)
        self.detach = detach
        self.proc: subprocess.Popen[bytes] | None = None
        if log_path is not None:
            self._log = Path(log_path).open("w+")  # noqa: SIM115 - lives as long as the server
        else:
            self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
                "w+", prefix="pysonic-serve-", suffix=".log", delete=False
            )

    @property
    def grpc_url(self) -> str:
        if self.grpc_port is None:
            msg = "the server process is not running"
            raise RuntimeError(msg)
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self) -> Path:
        return Path(self._log.name)

    def log_text(self) -> str:
        return Path(self._log.name).read_text()

    def start(self) -> ServerProcess:
        if self._log.closed:  # restarted after stop(): append to the same log
            self._log = Path(self._log.name).open("a+")  # noqa: SIM115 - closed by stop()
        cmd = [
            sys.executable, "-m", "pysonic", "serve",
            "--model-repository", str(self.repository),
            "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0",
        ]  # fmt: skip
        if self.models:
            cmd += ["--model-control-mode", "explicit"]
            for m in self.models:
                cmd += ["--load-model", m]
        cmd += self.extra_args
        env = {**os.environ, **(self.env or {}), "COLUMNS": "250"}
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=env,
            start_new_session=self.detach,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            port = _GRPC.search(text)
            if port:
                self.grpc_port = int(port.group(1))
                http = _HTTP.search(text, port.end())
                self.http_port = int(http.group(1)) if http else None
                metrics = _METRICS.search(text, port.end())
                self.metrics_port = int(metrics.group(1)) if metrics else None
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)  # polling the log, bounded by the deadline
        self.stop()
        msg = f"pysonic serve did not start:\n{self.log_text()[-3000:]}"
        raise RuntimeError(msg)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL after ``timeout``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.grpc_port = self.http_port = self.metrics_port = None
        self._log.close()  # the file stays on disk: log_text() still reads it
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

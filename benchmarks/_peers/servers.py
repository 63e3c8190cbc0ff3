"""Start and stop the servers under test, each a subprocess on free 127.0.0.1 ports.

Every launcher returns a started :class:`Server` (``.url`` for the load generator, ``.stop()``)
or raises ``RuntimeError`` saying why it could not start (with the tail of its log). Peers run in
their own session (process group), so ``stop`` reaches what they spawn too (tritonserver and its
Python stubs, MLServer's worker processes): SIGTERM to the leader, a grace period, then SIGKILL
to the whole group. Readiness is polled with a deadline (ServerReady and every ModelReady over
gRPC), never slept for.

Example::

    with echo_server(Path(tmp), uvloop=False) as server:
        measure(LoadTarget(server.url, "identity_fp32", inputs), concurrency=8, seconds=2.0)
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from _peers.plan import ModelPlan

__all__ = ["PeerProcess", "Server", "echo_server", "mlserver", "pysonic", "pytriton"]

HERE = Path(__file__).resolve().parent


class Server:
    """A started server: where to send requests, how long it took to start, how to stop it."""

    url: str = ""
    start_seconds: float = 0.0

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port() -> int:
    """A port that was free a moment ago (for servers that cannot bind port 0 themselves)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _grpc_ready(url: str, models: Sequence[str]) -> bool:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        client = grpcclient.InferenceServerClient(url)
        try:
            return client.is_server_ready() and all(client.is_model_ready(m) for m in models)
        finally:
            client.close()
    except InferenceServerException:
        return False


class PeerProcess(Server):
    """``cmd`` in a session of its own, stdout+stderr to a log file.

    Ready once ``ready_line`` (a regex whose group 1 is the gRPC port, unless ``port`` is given)
    shows in the log and the gRPC health RPCs say yes for ``models``.
    """

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        workdir: Path,
        models: Sequence[str] = (),
        port: int | None = None,
        ready_line: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        start_timeout: float = 180.0,
    ) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        start = time.monotonic()
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                list(cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        try:
            self._wait_ready(models, port, ready_line, start + start_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - start

    def _wait_ready(
        self, models: Sequence[str], port: int | None, ready_line: str | None, deadline: float
    ) -> None:
        pattern = re.compile(ready_line) if ready_line else None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}"
                raise RuntimeError(msg)
            found = pattern.search(self.log.read_text()) if pattern else None
            if pattern is None or found:
                if port is None and found:
                    port = int(found.group(1))
                if port is not None and _grpc_ready(f"127.0.0.1:{port}", models):
                    self.url = f"127.0.0.1:{port}"
                    return
            time.sleep(0.1)  # polling the log and the health RPCs, bounded by the deadline
        msg = f"{self.name} was not ready in time:\n{self.log_tail()}"
        raise RuntimeError(msg)

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, grace: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with suppress(ProcessLookupError, PermissionError):  # what it spawned and left behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class _Pysonic(Server):
    def __init__(self, repository: Path, models: Sequence[str]) -> None:
        from pysonic.server import ServerProcess

        start = time.monotonic()
        self._server = ServerProcess(repository, models=list(models))
        try:
            self._server.start()
        except BaseException:  # Ctrl-C while it starts, too
            self._server.stop()
            raise
        self.url = self._server.grpc_url
        self.start_seconds = time.monotonic() - start

    def stop(self) -> None:
        self._server.stop()


def pysonic(repository: Path, models: Sequence[str]) -> Server:
    """``pysonic serve`` on the repository itself (its configs are the reference)."""
    return _Pysonic(repository, models)


def echo_server(workdir: Path, *, uvloop: bool, hop: Path | None = None) -> Server:
    """The bare grpc.aio echo floor (``hop``: through a worker thread running that model)."""
    cmd = [sys.executable, str(HERE / "echo_server.py"), "--port", "0"]
    if uvloop:
        cmd.append("--uvloop")
    if hop is not None:
        cmd += ["--hop", str(hop)]
    return PeerProcess(
        "echo-hop" if hop else "echo-uvloop" if uvloop else "echo",
        cmd,
        workdir=workdir,
        ready_line=r"READY port=(\d+)",
        start_timeout=60.0,
    )


def _libdir(python: Path) -> str:
    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return run.stdout.strip()


def pytriton(python: Path, plans: Sequence[ModelPlan], workdir: Path) -> Server:
    """PyTriton (a real tritonserver) with one onnxruntime infer function per instance."""
    plan_file = workdir / "pytriton-plan.json"
    plan_file.write_text(json.dumps([p.as_dict() for p in plans]))
    ports = [free_port() for _ in range(3)]
    # tritonserver links libpython: under a pyenv interpreter it is found only via the libdir
    paths = [_libdir(python), os.environ.get("LD_LIBRARY_PATH", "")]
    env = {"LD_LIBRARY_PATH": ":".join(p for p in paths if p)}
    return PeerProcess(
        "pytriton",
        [
            str(python),
            str(HERE / "pytriton_serve.py"),
            str(plan_file),
            *map(str, ports),
            str(workdir / "pytriton-workspace"),
        ],
        workdir=workdir,
        models=[p.name for p in plans],
        ready_line=r"READY grpc=(\d+)",
        env=env,
    )


def mlserver_settings(plans: Sequence[ModelPlan], root: Path, workers: int) -> int:
    """settings.json + one model-settings.json per model under ``root``; the gRPC port."""
    grpc_port = free_port()
    settings = {
        "debug": False,  # True (the default) adds a per-request access-log interceptor
        "host": "127.0.0.1",
        "http_port": free_port(),
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "parallel_workers": workers,
        "metrics_dir": str(root / ".metrics"),
        "environments_dir": str(root / ".envs"),
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    for plan in plans:
        model = {
            "name": plan.name,
            "implementation": "mlserver_ort.OrtRuntime",
            "parameters": {
                "uri": plan.onnx,
                "extra": {"instances": plan.instances, "intra_op_threads": plan.intra_op_threads},
            },
        }
        if plan.dynamic_batching:
            # MLServer's adaptive batcher counts requests, not rows; its wait is in seconds
            model["max_batch_size"] = plan.max_batch_size
            model["max_batch_time"] = plan.max_queue_delay_us / 1e6
        (root / plan.name).mkdir(exist_ok=True)
        (root / plan.name / "model-settings.json").write_text(json.dumps(model, indent=2))
    return grpc_port


def mlserver(python: Path, plans: Sequence[ModelPlan], workdir: Path, *, workers: int) -> Server:
    """``mlserver start`` on generated settings, with ``mlserver_ort``'s onnxruntime runtime."""
    root = workdir / f"mlserver-w{workers}"
    port = mlserver_settings(plans, root, workers)
    env = {"PYTHONPATH": str(HERE)}  # mlserver_ort, in MLServer and in its worker processes
    return PeerProcess(
        f"mlserver-w{workers}",
        [str(python.parent / "mlserver"), "start", str(root)],
        workdir=workdir,
        models=[p.name for p in plans],
        port=port,
        env=env,
        cwd=root,
    )

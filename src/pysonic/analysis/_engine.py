"""Where an analysis' inference runs, chosen by configuration; one engine per process.

:class:`EngineSpec` is a small frozen (picklable, hashable) description: the model, and
``backend``

* ``"direct"``: in-process onnxruntime on the calling thread (no server);
* ``"local"``: an embedded pysonic server on a thread of this process, on ``model_repository``;
* ``"site"``: SONIC servers from a site configuration (``servers``, else ``site_config``, else
  the environment: ``PYSONIC_SITE_CONFIG`` / ``PYSONIC_SERVERS``), with balancing, retries and
  the site's local fallback (:func:`pysonic.client.connect`).

:func:`engine` turns a spec into a live engine the first time a process asks, and returns the
same one afterwards: on a dask worker the task carries only the spec, and the worker process
builds its own client (and, for ``local``, its own server) once. Nothing live is ever pickled;
engines are closed at interpreter exit. A forked child does not reuse its parent's engines (the
registry is keyed by process id).

:meth:`Engine.run` splits the inputs into requests of ``batch_size`` rows, keeps up to
``max_in_flight`` of them in flight (async mode; the server batches them together), and writes
each answer into its rows, so the outputs come back in input order.

Example::

    spec = EngineSpec("particlenet_lite", backend="site", servers=("gpu-1:8001",))
    outputs = engine(spec).run(inputs, batch_size=64)      # {"softmax": [J, 5]}
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tritonclient.grpc import model_config_pb2

from pysonic.errors import InvalidArgumentError

__all__ = ["BACKENDS", "Backend", "Engine", "EngineSpec", "close_engine", "close_engines", "engine"]

Backend = Literal["direct", "local", "site"]
BACKENDS: tuple[str, ...] = ("direct", "local", "site")
Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class EngineSpec:
    """What to run and where (see the module docstring); every field is a plain value."""

    model: str = "particlenet_lite"
    backend: Backend = "local"
    model_version: str = ""
    servers: tuple[str, ...] = ()
    site_config: str | None = None
    model_repository: str = "model_repository"
    timeout: float | None = 120.0
    allowed_tries: int = 3
    compression: str | None = None
    max_in_flight: int = 8
    #: TLS for ``servers`` given here: (CA file, client certificate, client key), None = plain
    tls: tuple[str | None, str | None, str | None] | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            msg = f"unknown backend '{self.backend}' (known: {', '.join(BACKENDS)})"
            raise InvalidArgumentError(msg)
        if self.max_in_flight < 1:
            msg = f"max_in_flight must be at least 1, got {self.max_in_flight}"
            raise InvalidArgumentError(msg)


class Engine:
    """A live inference path: ``run`` batches and orders, subclasses send one batch."""

    spec: EngineSpec

    def submit(self, inputs: Mapping[str, np.ndarray]) -> concurrent.futures.Future[Outputs]:
        raise NotImplementedError

    def model_config(self) -> model_config_pb2.ModelConfig:
        raise NotImplementedError

    def close(self) -> None:
        """Release the client (and server); the engine is not used afterwards."""

    def run(self, inputs: Mapping[str, np.ndarray], batch_size: int) -> Outputs:
        """All rows of ``inputs`` in requests of ``batch_size``; outputs in row order."""
        if batch_size < 1:
            msg = f"batch_size must be at least 1, got {batch_size}"
            raise InvalidArgumentError(msg)
        n = len(next(iter(inputs.values()))) if inputs else 0
        window = self.spec.max_in_flight
        pending: dict[concurrent.futures.Future[Outputs], int] = {}
        out: Outputs = {}
        error: BaseException | None = None

        def collect(done: set[concurrent.futures.Future[Outputs]]) -> None:
            nonlocal error
            for fut in done:
                start = pending.pop(fut)
                if fut.exception() is not None:
                    error = error or fut.exception()
                    continue
                for name, value in fut.result().items():
                    if name not in out:
                        out[name] = np.empty((n, *value.shape[1:]), value.dtype)
                    out[name][start : start + len(value)] = value

        for start in range(0, n, batch_size):
            if error is not None:
                break
            if len(pending) >= window:
                done, _ = concurrent.futures.wait(pending, return_when="FIRST_COMPLETED")
                collect(done)
            batch = {k: v[start : start + batch_size] for k, v in inputs.items()}
            pending[self.submit(batch)] = start
        collect(concurrent.futures.wait(pending).done)  # never leave requests behind
        if error is not None:
            raise error
        return out


class DirectEngine(Engine):
    """In-process onnxruntime: each batch runs on the calling thread."""

    def __init__(self, spec: EngineSpec) -> None:
        from pysonic.workflow._inference import DirectInference

        self.spec = spec
        model_dir = Path(spec.model_repository) / spec.model
        if not model_dir.is_dir():
            msg = f"direct inference: no model '{spec.model}' in {spec.model_repository}"
            raise InvalidArgumentError(msg)
        self._direct = DirectInference(model_dir)

    def submit(self, inputs: Mapping[str, np.ndarray]) -> concurrent.futures.Future[Outputs]:
        return self._direct.submit(inputs)

    def model_config(self) -> model_config_pb2.ModelConfig:
        from pysonic.repository import ModelRepository

        return ModelRepository(Path(self.spec.model_repository)).load(self.spec.model).config


class SonicEngine(Engine):
    """A :class:`~pysonic.client.SonicClient` in async mode; ``local`` also owns its server."""

    def __init__(self, spec: EngineSpec) -> None:
        from pysonic.client import ServerEntry, SiteConfig, SonicConfig, TLSConfig, connect

        self.spec = spec
        self._server: Any = None
        config = SonicConfig(
            spec.model,
            model_version=spec.model_version,
            timeout=spec.timeout,
            allowed_tries=spec.allowed_tries,
            compression=spec.compression,
            mode="async",
        )
        if spec.backend == "local":
            from pysonic.server import EmbeddedServer, ServerOptions

            options = ServerOptions(
                model_repository=Path(spec.model_repository),
                host="127.0.0.1",
                grpc_port=0,
                metrics_port=None,
                model_control_mode="explicit",
                load_models=[spec.model],
            )
            self._server = EmbeddedServer(options).start()
            site = SiteConfig(servers=(ServerEntry.parse(self._server.grpc_url),))
        elif spec.servers:
            tls = TLSConfig(*spec.tls) if spec.tls is not None else None
            entries = [ServerEntry.parse(s) for s in spec.servers]
            site = SiteConfig(
                servers=tuple(ServerEntry(e.address, e.port, e.name, tls) for e in entries)
            )
        elif spec.site_config is not None:
            site = SiteConfig.load(spec.site_config)
        else:
            site = SiteConfig.from_env()
        try:
            self.client = connect(config, site)
        except BaseException:
            self.close()
            raise

    def submit(self, inputs: Mapping[str, np.ndarray]) -> concurrent.futures.Future[Outputs]:
        return self.client.infer_async(inputs)

    def model_config(self) -> model_config_pb2.ModelConfig:
        return self.client.model_config()

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self._server is not None:
            self._server.stop()
            self._server = None


_LOCK = threading.Lock()
_ENGINES: dict[tuple[int, EngineSpec], Engine] = {}


def engine(spec: EngineSpec) -> Engine:
    """This process's engine for ``spec``, created on first use."""
    key = (os.getpid(), spec)
    with _LOCK:
        live = _ENGINES.get(key)
        if live is None:
            live = DirectEngine(spec) if spec.backend == "direct" else SonicEngine(spec)
            _ENGINES[key] = live
        return live


def close_engine(spec: EngineSpec) -> None:
    """Close this process's engine for ``spec``, if it has one."""
    with _LOCK:
        live = _ENGINES.pop((os.getpid(), spec), None)
    if live is not None:
        live.close()


def close_engines() -> None:
    """Close this process's engines (also run at interpreter exit)."""
    with _LOCK:
        mine = [k for k in _ENGINES if k[0] == os.getpid()]
        engines = [_ENGINES.pop(k) for k in mine]
    for e in engines:
        e.close()


# Close before the interpreter stops thread pools: a plain atexit hook runs after
# concurrent.futures refuses new work, and an embedded server's shutdown needs a thread
# (asyncio.to_thread). threading's own exit hooks run first, newest first.
_register = getattr(threading, "_register_atexit", atexit.register)
_register(close_engines)

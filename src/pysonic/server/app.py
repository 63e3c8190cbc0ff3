"""The server process: startup -> serve -> shutdown, on one asyncio loop.

Startup loads the models (readiness stays false until they are loaded), binds the gRPC listener,
the HTTP/REST listener when ``http_port`` is set, and the Prometheus endpoint (port 0 picks a free
port; the chosen ports are logged and exposed as attributes); gRPC and HTTP share the one loop.
Shutdown (SIGINT/SIGTERM or :meth:`Server.stop`) turns readiness off, refuses new requests, lets
in-flight ones finish within the grace period (both listeners at once), drains the model queues,
and closes.

Example::

    async with Server(ServerOptions(model_repository=Path("model_repository"), grpc_port=0)) as s:
        print(s.grpc_port)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from prometheus_client import CollectorRegistry, start_http_server

from pysonic.errors import InvalidArgumentError, PysonicError
from pysonic.protocol.shm import DEFAULT_MAX_TOTAL_BYTES, SharedMemoryRegistry
from pysonic.repository import ModelRepository
from pysonic.scheduling import DEFAULT_QUEUE_CAP
from pysonic.server.admission import Admission, AdmissionLimits, default_inflight_bytes
from pysonic.server.auth import AuthPolicy
from pysonic.server.core import InferenceCore
from pysonic.server.grpc_auth import AuthInterceptor
from pysonic.server.grpc_service import InferenceServicer, add_to_server
from pysonic.server.http import DEFAULT_MAX_BODY_BYTES, HttpApp, HttpListener
from pysonic.server.http.auth import AuthMiddleware
from pysonic.server.metrics import TritonMetricsCollector
from pysonic.server.poller import RepositoryPoller
from pysonic.server.state import ServerState
from pysonic.server.tls import ServerTLS

__all__ = ["Server", "ServerOptions", "StartupError"]

log = logging.getLogger("pysonic.server")


class StartupError(PysonicError):
    """The server could not start (a model failed to load, a port was taken)."""


@dataclass
class ServerOptions:
    """Server settings; names follow tritonserver's options where they exist."""

    model_repository: Path = Path("model_repository")
    host: str = "0.0.0.0"
    grpc_port: int = 8001
    http_port: int | None = None
    metrics_port: int | None = 8002
    strict_model_config: bool = False
    model_control_mode: str = "none"
    load_models: list[str] = field(default_factory=list)
    exit_on_error: bool = True
    grpc_max_message_bytes: int = 256 * 1024 * 1024
    http_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    queue_cap: int = DEFAULT_QUEUE_CAP
    drain_timeout: float = 30.0
    repository_poll_secs: float = 15.0
    shared_memory_max_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    shared_memory_key_prefixes: list[str] | None = None
    #: TLS for gRPC and HTTPS (PEM files); with a client CA, mutual TLS (docs/security.md)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    #: bearer-token authentication and per-model authorization (a policy file, or a policy)
    auth_policy: Path | AuthPolicy | None = None
    #: one request's declared bytes, both protocols (0: gRPC's and HTTP's own limits only)
    max_request_bytes: int = 0
    #: bytes all in-flight requests may hold together (None: a quarter of RAM; 0: no limit)
    max_inflight_bytes: int | None = None
    #: requests in flight per client identity (0: no limit)
    max_inflight_per_client: int = 0

    def admission_limits(self) -> AdmissionLimits:
        budget = self.max_inflight_bytes
        return AdmissionLimits(
            max_request_bytes=self.max_request_bytes,
            max_inflight_bytes=default_inflight_bytes() if budget is None else budget,
            max_inflight_per_client=self.max_inflight_per_client,
        )

    def request_limit(self, transport_limit: int) -> int:
        """A transport's message / body limit, lowered to ``max_request_bytes`` when set."""
        if self.max_request_bytes > 0:
            return min(transport_limit, self.max_request_bytes)
        return transport_limit


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class Server:
    """A pysonic server: gRPC and HTTP frontends + metrics over an :class:`InferenceCore`."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.state = ServerState(model_control_mode=options.model_control_mode)
        self.core = InferenceCore(
            ModelRepository(Path(options.model_repository), strict=options.strict_model_config),
            queue_cap=options.queue_cap,
            drain_timeout=options.drain_timeout,
            shared_memory=SharedMemoryRegistry(
                max_total_bytes=options.shared_memory_max_bytes,
                allowed_key_prefixes=options.shared_memory_key_prefixes,
            ),
        )
        #: in-flight limits and accounting, shared by the gRPC and HTTP frontends
        self.admission = Admission(options.admission_limits())
        self.poller: RepositoryPoller | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.metrics_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._http: HttpListener | None = None
        self._metrics = None
        self._stopping: asyncio.Event | None = None
        self.tls: ServerTLS | None = None
        self.auth: AuthPolicy | None = None

    def _security(self) -> None:
        """Load the TLS files and the auth policy (a bad file is a StartupError naming it)."""
        opts = self.options
        try:
            if opts.tls_cert_file is not None or opts.tls_key_file is not None:
                if opts.tls_cert_file is None or opts.tls_key_file is None:
                    msg = "TLS needs both a certificate and its key (--tls-cert, --tls-key)"
                    raise StartupError(msg)
                self.tls = ServerTLS(opts.tls_cert_file, opts.tls_key_file, opts.tls_client_ca_file)
                self.tls.check()
            elif opts.tls_client_ca_file is not None:
                raise StartupError("a TLS client CA needs --tls-cert and --tls-key")
            if isinstance(opts.auth_policy, AuthPolicy):
                self.auth = opts.auth_policy
            elif opts.auth_policy is not None:
                self.auth = AuthPolicy.load(opts.auth_policy)
        except InvalidArgumentError as err:
            raise StartupError(err.message) from None

    async def start(self) -> None:
        opts = self.options
        self._stopping = asyncio.Event()
        self._security()
        if opts.model_control_mode == "explicit":
            names = None if "*" in opts.load_models else list(opts.load_models)
            if names is None:
                names = self.core.repository.model_names()
        else:
            names = self.core.repository.model_names()
        baseline = {}
        if opts.model_control_mode == "poll":
            self.poller = RepositoryPoller(self.core, opts.repository_poll_secs)
            baseline = await self.poller.scan()  # before loading: no change can slip between
        failed = await self.core.start(names)
        if failed and opts.exit_on_error:
            await self.core.shutdown()
            msg = f"failed to load model(s): {', '.join(failed)} (see the log above)"
            raise StartupError(msg)
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                (
                    "grpc.max_receive_message_length",
                    opts.request_limit(opts.grpc_max_message_bytes),
                ),
                ("grpc.max_send_message_length", opts.grpc_max_message_bytes),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
            interceptors=[AuthInterceptor(self.auth)] if self.auth is not None else None,
        )
        add_to_server(InferenceServicer(self.core, self.state, self.admission), self._grpc)
        try:
            address = _address(opts.host, opts.grpc_port)
            if self.tls is not None:
                self.grpc_port = self._grpc.add_secure_port(address, self.tls.grpc_credentials())
            else:
                self.grpc_port = self._grpc.add_insecure_port(address)
        except RuntimeError as err:
            self.grpc_port = 0
            bind_error: Exception | None = err
        else:
            bind_error = None
        if self.grpc_port == 0:
            await self.core.shutdown()
            msg = f"cannot bind gRPC to {_address(opts.host, opts.grpc_port)} (port in use?)"
            raise StartupError(msg) from bind_error
        await self._grpc.start()
        if opts.http_port is not None:
            await self._start_http()
        if opts.metrics_port is not None:
            registry = CollectorRegistry()
            registry.register(TritonMetricsCollector(self.core))
            self._metrics, _ = start_http_server(opts.metrics_port, opts.host, registry=registry)
            self.metrics_port = self._metrics.server_port
        if self.poller is not None:
            self.poller.start(baseline)
        self.state.ready = True
        if self.tls is not None or self.auth is not None:
            log.info(
                "security: TLS %s, bearer-token auth %s",
                ("mutual" if self.tls.client_ca_file else "on") if self.tls else "off",
                "on" if self.auth else "off",
            )
        log.info(
            "pysonic serving %d model(s): gRPC on %s, HTTP on %s, metrics on %s",
            sum(1 for r in self.core.models.values() if r.versions),
            _address(opts.host, self.grpc_port),
            _address(opts.host, self.http_port) if self._http else "off",
            _address(opts.host, self.metrics_port) if self._metrics else "off",
        )

    async def _start_http(self) -> None:
        opts = self.options
        assert opts.http_port is not None
        app: HttpApp | AuthMiddleware = HttpApp(
            self.core,
            self.state,
            max_body_bytes=opts.request_limit(opts.http_max_body_bytes),
            admission=self.admission,
        )
        if self.auth is not None:
            app = AuthMiddleware(app, self.auth)
        ssl = self.tls.uvicorn_options() if self.tls is not None else None
        listener = HttpListener(app, opts.host, opts.http_port, ssl=ssl)
        try:
            self.http_port = await listener.start()
        except OSError as err:
            if self._grpc is not None:
                await self._grpc.stop(None)
                self._grpc = None
            await self.core.shutdown()
            msg = f"cannot bind HTTP to {_address(opts.host, opts.http_port)} ({err})"
            raise StartupError(msg) from err
        self._http = listener

    async def stop(self, grace: float | None = None) -> None:
        """Readiness off, refuse new work, finish in-flight requests, drain, close.

        The listeners stay open while admitted requests finish, so health checks see
        ``ready: false`` and new inference requests get UNAVAILABLE / 503 (a load balancer moves
        on) rather than a refused connection; then they close with what is left of ``grace``."""
        grace = self.options.drain_timeout if grace is None else grace
        deadline = asyncio.get_running_loop().time() + grace
        self.state.ready = False
        self.state.accepting = False
        if self.poller is not None:
            await self.poller.stop()
        if self._grpc is not None or self._http is not None:
            drained = await self.admission.wait_idle(grace)
            if not drained:
                log.warning(
                    "drain timeout (%.1f s) passed with %d request(s) in flight; closing",
                    grace,
                    self.admission.inflight,
                )
        grace = max(deadline - asyncio.get_running_loop().time(), 0.0)
        closing = []
        if self._grpc is not None:
            closing.append(self._grpc.stop(grace))
            self._grpc = None
        if self._http is not None:
            closing.append(self._http.stop(grace))
            self._http = None
        await asyncio.gather(*closing)
        await self.core.shutdown()
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None
        self.state.live = False
        if self._stopping is not None:
            self._stopping.set()
        log.info("pysonic server stopped")

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def serve(self) -> None:
        """Run until SIGINT/SIGTERM, then shut down gracefully."""
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        assert self._stopping is not None
        await self._stopping.wait()
        log.info("shutting down: finishing in-flight requests")
        await self.stop()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

"""The load generator's control plane: model config, ModelStatistics and shared-memory
registration over Triton's gRPC or HTTP protocol (tritonclient's synchronous clients).

The controller reads ModelStatistics before and after each measurement window; the differences
split the server's time per request into queue and compute (input / infer / output), exactly the
numbers perf_analyzer puts in its ``Server Queue`` and ``Server Compute *`` columns.

Example::

    with Control("grpc", "127.0.0.1:8001") as control:
        before = control.statistics("dense_tagger")
        ...
        delta = control.statistics("dense_tagger") - before
        print(delta.success_count, delta.avg_queue_us)

A :class:`Connection` carries what a secured server needs (perf_analyzer's ``--ssl-grpc-*``,
``--ssl-https-*`` and ``-H``): TLS, optionally with a client certificate, and extra headers such as
``Authorization: Bearer ...``; the control plane and the load processes both use it.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any

__all__ = ["PROTOCOLS", "Connection", "Control", "ServerStats", "parse_header", "stats_from_json"]

PROTOCOLS = ("grpc", "http")


@dataclass(frozen=True)
class Connection:
    """TLS and extra headers for every connection to the server (picklable: load processes
    rebuild their channels from it). Files are PEM paths; ``None`` means the system's CA store and
    no client certificate."""

    tls: bool = False
    ca_file: str | None = None  #: CA (root certificates) that signs the server's certificate
    cert_file: str | None = None  #: client certificate chain (mutual TLS)
    key_file: str | None = None  #: the client certificate's private key
    verify_peer: bool = True  #: HTTPS only: check the server's certificate
    verify_host: bool = True  #: HTTPS only: check the server's name against it
    #: sent with every request (HTTP headers, gRPC metadata)
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            msg = "a client certificate needs both its certificate chain and its private key"
            raise ValueError(msg)

    @property
    def header_dict(self) -> dict[str, str]:
        return dict(self.headers)

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The headers as gRPC metadata (keys lower-case, as HTTP/2 requires)."""
        return tuple((k.lower(), v) for k, v in self.headers) or None

    def grpc_credentials(self) -> Any:
        import grpc

        def read(path: str | None) -> bytes | None:
            return None if path is None else _read(path)

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )

    def check_files(self) -> None:
        """Read every certificate file once, so a missing one is a ValueError naming it
        (tritonclient's and ssl's own errors do not)."""
        for path in (self.ca_file, self.cert_file, self.key_file):
            if path is not None:
                _read(path)

    def ssl_context(self) -> ssl.SSLContext:
        """An HTTPS client context."""
        self.check_files()
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        if not self.verify_host or not self.verify_peer:
            context.check_hostname = False
        if not self.verify_peer:
            context.verify_mode = ssl.CERT_NONE
        return context


def _gevent_https(conn: Connection) -> dict[str, Any]:
    """tritonclient.http's (geventhttpclient's) TLS arguments for ``conn``."""
    import gevent.ssl

    def factory(cafile: str | None = None) -> Any:
        context = gevent.ssl.create_default_context(cafile=cafile)
        if not conn.verify_peer:
            context.check_hostname = False
            context.verify_mode = gevent.ssl.CERT_NONE
        return context

    options: dict[str, Any] = {}
    if conn.ca_file is not None:
        options["ca_certs"] = conn.ca_file
    if conn.cert_file is not None:
        options.update(certfile=conn.cert_file, keyfile=conn.key_file)
    return {
        "ssl": True,
        "ssl_options": options,
        "ssl_context_factory": factory,
        "insecure": not (conn.verify_host and conn.verify_peer),
    }


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        msg = f"cannot read {path}: {err.strerror}"
        raise ValueError(msg) from None


def parse_header(text: str) -> tuple[str, str]:
    """perf_analyzer's ``-H 'Name:Value'`` (spaces around the value dropped)."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in name for c in " \t\r\n"):
        msg = f"a header is 'Name:Value', got {text!r}"
        raise ValueError(msg)
    return name.strip(), value.strip()


@dataclass(frozen=True)
class ServerStats:
    """Cumulative ModelStatistics of one model (summed over its versions); times in ns.

    Subtracting two snapshots gives the window's delta; the ``avg_*_us`` properties are per
    request, as Triton charges each request of a batch its batch's compute time.
    """

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    queue_count: int = 0
    queue_ns: int = 0
    compute_input_count: int = 0
    compute_input_ns: int = 0
    compute_infer_count: int = 0
    compute_infer_ns: int = 0
    compute_output_count: int = 0
    compute_output_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0

    def __sub__(self, other: ServerStats) -> ServerStats:
        return ServerStats(
            **{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)}
        )

    def __add__(self, other: ServerStats) -> ServerStats:
        return ServerStats(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    @staticmethod
    def _avg_us(ns: int, count: int) -> float:
        return ns / count / 1000.0 if count > 0 else 0.0

    @property
    def avg_queue_us(self) -> float:
        return self._avg_us(self.queue_ns, self.queue_count)

    @property
    def avg_compute_input_us(self) -> float:
        return self._avg_us(self.compute_input_ns, self.compute_input_count)

    @property
    def avg_compute_infer_us(self) -> float:
        return self._avg_us(self.compute_infer_ns, self.compute_infer_count)

    @property
    def avg_compute_output_us(self) -> float:
        return self._avg_us(self.compute_output_ns, self.compute_output_count)

    @property
    def avg_batch(self) -> float:
        """Inferences (rows) per backend execution: how well the server batched."""
        return self.inference_count / self.execution_count if self.execution_count else 0.0


def stats_from_json(doc: Mapping[str, Any], version: str = "") -> ServerStats:
    """ServerStats from a statistics document (gRPC ``as_json`` or HTTP: the same field names;
    gRPC's JSON writes int64 as strings and leaves zeros out)."""
    total = ServerStats()
    for entry in doc.get("model_stats", []):
        if version and str(entry.get("version", "")) != version:
            continue
        inf = entry.get("inference_stats", {})

        def pair(key: str, inf: Mapping[str, Any] = inf) -> tuple[int, int]:
            d = inf.get(key, {})
            return int(d.get("count", 0)), int(d.get("ns", 0))

        s_c, s_ns = pair("success")
        f_c, _ = pair("fail")
        q_c, q_ns = pair("queue")
        ci_c, ci_ns = pair("compute_input")
        cf_c, cf_ns = pair("compute_infer")
        co_c, co_ns = pair("compute_output")
        total = total + ServerStats(
            s_c, s_ns, f_c, q_c, q_ns, ci_c, ci_ns, cf_c, cf_ns, co_c, co_ns,
            int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0)),
        )  # fmt: skip
    return total


class Control:
    """Synchronous control requests to one server over ``protocol`` (``grpc`` or ``http``)."""

    def __init__(
        self,
        protocol: str,
        url: str,
        *,
        timeout: float = 30.0,
        connection: Connection | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            msg = f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"
            raise ValueError(msg)
        self.protocol = protocol
        self.url = url
        self.timeout = timeout
        self.connection = conn = connection or Connection()
        if protocol == "grpc":
            import tritonclient.grpc as grpcclient

            tls: dict[str, Any] = {}
            if conn.tls:
                conn.check_files()
                tls = {
                    "ssl": True,
                    "root_certificates": conn.ca_file,
                    "private_key": conn.key_file,
                    "certificate_chain": conn.cert_file,
                }
            self._client: Any = grpcclient.InferenceServerClient(url, **tls)
        else:
            import tritonclient.http as httpclient

            https: dict[str, Any] = {}
            if conn.tls:
                conn.check_files()
                https = _gevent_https(conn)
            self._client = httpclient.InferenceServerClient(
                url, connection_timeout=timeout, network_timeout=timeout, **https
            )

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.timeout)
        if self.connection.headers:
            headers = self.connection.header_dict
            if self.protocol == "grpc":  # gRPC metadata keys are lower-case
                headers = dict(self.connection.grpc_metadata or ())
            kwargs.setdefault("headers", headers)
        return getattr(self._client, name)(*args, **kwargs)

    def live(self) -> bool:
        return bool(self._call("is_server_live"))

    def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        """The model's config as a JSON dict (``ModelIO.from_config`` reads it)."""
        if self.protocol == "grpc":
            doc = self._call("get_model_config", model, version, as_json=True)
            return dict(doc.get("config", {}))
        return dict(self._call("get_model_config", model, version))

    def statistics(self, model: str, version: str = "") -> ServerStats:
        if self.protocol == "grpc":
            doc = self._call("get_inference_statistics", model, version, as_json=True)
        else:
            doc = self._call("get_inference_statistics", model, version)
        return stats_from_json(doc, version)

    def register_system_shm(self, name: str, key: str, byte_size: int) -> None:
        self._call("register_system_shared_memory", name, key, byte_size)

    def unregister_system_shm(self, name: str) -> None:
        self._call("unregister_system_shared_memory", name)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Control:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""Client transports: one tiny async interface, and its gRPC implementation.

Every transport answers ``infer(request, timeout=, exclude=)``; load balancing and retries are
*wrapping* transports (``Balanced``, ``Retrying``) over this same interface, never branches in the
client. ``GrpcTransport`` speaks KServe v2 / Triton gRPC to pysonic or NVIDIA Triton: requests are
serialized with each tensor copied once (``encode_infer_request``), responses decoded into views
(``np.frombuffer``), the channel is reused with keep-alive, and gRPC errors are mapped to pysonic's
exception tree in one place (:func:`map_rpc_error`).

Example::

    transport = GrpcTransport("127.0.0.1:8001", compression="gzip")
    response = await transport.infer(request, timeout=5.0)
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from tritonclient.grpc import model_config_pb2, service_pb2

from pysonic.errors import InvalidArgumentError, PysonicError, from_grpc_status
from pysonic.protocol.grpc_codec import decode_infer_response, encode_infer_request
from pysonic.protocol.types import InferRequest, InferResponse

__all__ = ["AsyncTransport", "GrpcTransport", "ModelIndexEntry", "TLSConfig", "map_rpc_error"]

_SERVICE = "/inference.GRPCInferenceService/"
_COMPRESSION = {
    None: grpc.Compression.NoCompression,
    "none": grpc.Compression.NoCompression,
    "gzip": grpc.Compression.Gzip,
    "deflate": grpc.Compression.Deflate,
}


@dataclass(frozen=True, slots=True)
class ModelIndexEntry:
    name: str
    version: str
    state: str


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS for a server: CA bundle (None: the system's roots), optional client certificate and
    key (mutual TLS), and ``server_name`` when the certificate names another host than the
    address dialled (e.g. a server reached through an IP or a tunnel)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None


class AsyncTransport(abc.ABC):
    """What the client needs from a server (or a group of servers)."""

    name: str = ""

    @abc.abstractmethod
    async def infer(
        self,
        request: InferRequest,
        *,
        timeout: float | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> InferResponse:
        """Run one inference; ``exclude`` names servers a wrapping retry wants avoided."""

    async def model_config(self, model: str, version: str = "") -> model_config_pb2.ModelConfig:
        raise NotImplementedError

    async def model_statistics(
        self, model: str, version: str = ""
    ) -> list[service_pb2.ModelStatistics]:
        raise NotImplementedError

    async def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


def map_rpc_error(err: grpc.RpcError, server: str) -> PysonicError:
    """The one translation of gRPC failures into pysonic errors (with the server named)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    mapped = from_grpc_status(code, f"{server}: {details}")
    mapped.server = server
    return mapped


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


class GrpcTransport(AsyncTransport):
    """One server over grpc.aio; the channel is created lazily on the running loop."""

    def __init__(
        self,
        url: str,
        *,
        compression: str | None = None,
        tls: TLSConfig | None = None,
        token: str | None = None,
        keepalive_ms: int = 30_000,
        max_message_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        if compression not in _COMPRESSION:
            msg = f"compression must be one of none, gzip, deflate; got {compression!r}"
            raise InvalidArgumentError(msg)
        self.name = url
        self.url = url
        self._compression = _COMPRESSION[compression]
        self._tls = tls
        self._metadata: Sequence[tuple[str, str]] | None = (
            (("authorization", f"Bearer {token}"),) if token else None
        )
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", keepalive_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        self._channel: grpc.aio.Channel | None = None

    def _chan(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self._tls is not None:
                tls = self._tls
                creds = grpc.ssl_channel_credentials(
                    _read(tls.ca_file), _read(tls.key_file), _read(tls.cert_file)
                )
                options = list(self._options)
                if tls.server_name:
                    options.append(("grpc.ssl_target_name_override", tls.server_name))
                self._channel = grpc.aio.secure_channel(self.url, creds, options=options)
            else:
                self._channel = grpc.aio.insecure_channel(self.url, options=self._options)
            ch = self._channel
            self._infer = ch.unary_unary(
                _SERVICE + "ModelInfer",
                request_serializer=None,  # encode_infer_request already returns wire bytes
                response_deserializer=service_pb2.ModelInferResponse.FromString,
            )
        return self._channel

    def _method(
        self, name: str, request_cls: type, response_cls: type
    ) -> grpc.aio.UnaryUnaryMultiCallable:
        return self._chan().unary_unary(
            _SERVICE + name,
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )

    async def _call(
        self, name: str, request: object, response_cls: type, timeout: float | None = 10.0
    ) -> object:
        method = self._method(name, type(request), response_cls)
        try:
            return await method(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise map_rpc_error(err, self.url) from err

    async def infer(
        self,
        request: InferRequest,
        *,
        timeout: float | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> InferResponse:
        self._chan()
        payload = encode_infer_request(request)
        try:
            msg = await self._infer(
                payload, timeout=timeout, metadata=self._metadata, compression=self._compression
            )
        except grpc.RpcError as err:
            raise map_rpc_error(err, self.url) from err
        return decode_infer_response(msg)

    async def server_ready(self, timeout: float = 5.0) -> bool:
        resp = await self._call(
            "ServerReady",
            service_pb2.ServerReadyRequest(),
            service_pb2.ServerReadyResponse,
            timeout,
        )
        return bool(resp.ready)  # type: ignore[attr-defined]

    async def repository_index(self, timeout: float = 5.0) -> list[ModelIndexEntry]:
        resp = await self._call(
            "RepositoryIndex",
            service_pb2.RepositoryIndexRequest(ready=True),
            service_pb2.RepositoryIndexResponse,
            timeout,
        )
        return [ModelIndexEntry(m.name, m.version, m.state) for m in resp.models]  # type: ignore[attr-defined]

    async def load_model(self, model: str, timeout: float = 120.0) -> None:
        """RepositoryModelLoad (the server must run with --model-control-mode explicit)."""
        await self._call(
            "RepositoryModelLoad",
            service_pb2.RepositoryModelLoadRequest(model_name=model),
            service_pb2.RepositoryModelLoadResponse,
            timeout,
        )

    async def model_config(self, model: str, version: str = "") -> model_config_pb2.ModelConfig:
        resp = await self._call(
            "ModelConfig",
            service_pb2.ModelConfigRequest(name=model, version=version),
            service_pb2.ModelConfigResponse,
        )
        return resp.config  # type: ignore[attr-defined]

    async def model_statistics(
        self, model: str, version: str = ""
    ) -> list[service_pb2.ModelStatistics]:
        resp = await self._call(
            "ModelStatistics",
            service_pb2.ModelStatisticsRequest(name=model, version=version),
            service_pb2.ModelStatisticsResponse,
        )
        return list(resp.model_stats)  # type: ignore[attr-defined]

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

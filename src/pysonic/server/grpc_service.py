"""Triton's ``GRPCInferenceService`` on grpc.aio: thin handlers over :class:`InferenceCore`.

Every handler maps ``PysonicError`` to its gRPC status through :func:`pysonic.errors.grpc_status`;
anything else becomes INTERNAL and is logged once with the request id. RPCs this server does not
provide (CUDA shared memory, trace, logging settings) answer UNIMPLEMENTED with a message.

Handlers are registered from the service's protobuf descriptor (:func:`add_to_server`), as the
generated ``add_GRPCInferenceServiceServicer_to_server`` does, except that ModelInfer and
ModelStreamInfer answer wire bytes built by :func:`encode_infer_response` (each output tensor
copied once, not three times through a protobuf message).

Example::

    server = grpc.aio.server()
    add_to_server(InferenceServicer(core, state), server)
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from pysonic._version import __version__
from pysonic.errors import (
    InvalidArgumentError,
    PysonicError,
    UnavailableError,
    UnimplementedError,
    grpc_status,
)
from pysonic.protocol.grpc_codec import (
    decode_infer_request,
    decode_parameters,
    encode_infer_response,
    varint,
)
from pysonic.protocol.shm import CUDA_UNSUPPORTED
from pysonic.repository.config import parse_model_config_json
from pysonic.server.core import InferenceCore
from pysonic.server.state import ServerState

__all__ = ["EXTENSIONS", "InferenceServicer", "add_to_server"]

log = logging.getLogger(__name__)

#: Triton protocol extensions this server really implements (ServerMetadata.extensions).
EXTENSIONS = [
    "model_repository",
    "schedule_policy",
    "model_configuration",
    "statistics",
    "system_shared_memory",
]

#: In-flight requests per ModelStreamInfer stream (reading pauses past this).
STREAM_WINDOW = 1024

T = TypeVar("T")


def _rpc(
    empty: Callable[[], T],
) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Map errors to statuses in one place; answer an empty ``empty()`` with the status set."""
    return functools.partial(_wrap, empty=empty)


def _wrap(fn: Callable[..., Awaitable[T]], empty: Callable[[], T]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def handler(self: InferenceServicer, request: Any, context: Any) -> Any:
        try:
            return await fn(self, request, context)
        except PysonicError as err:
            context.set_code(grpc_status(err))
            context.set_details(err.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            rid = getattr(request, "id", "")
            log.exception("internal error in %s (request id %r)", fn.__name__, rid)
            context.set_code(grpc.StatusCode.INTERNAL)
            context.set_details(f"internal error in {fn.__name__}; see the server log")
        return empty()

    return handler


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """KServe v2 / Triton gRPC endpoints."""

    def __init__(self, core: InferenceCore, state: ServerState) -> None:
        self.core = core
        self.state = state

    # ------------------------------------------------------------------ health & metadata
    @_rpc(service_pb2.ServerLiveResponse)
    async def ServerLive(self, request: Any, context: Any) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=self.state.live)

    @_rpc(service_pb2.ServerReadyResponse)
    async def ServerReady(self, request: Any, context: Any) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self.state.ready and self.core.ready)

    @_rpc(service_pb2.ServerMetadataResponse)
    async def ServerMetadata(
        self, request: Any, context: Any
    ) -> service_pb2.ServerMetadataResponse:
        return service_pb2.ServerMetadataResponse(
            name="pysonic", version=__version__, extensions=EXTENSIONS
        )

    @_rpc(service_pb2.ModelReadyResponse)
    async def ModelReady(self, request: Any, context: Any) -> service_pb2.ModelReadyResponse:
        try:
            self.core.get_version(request.name, request.version)
        except PysonicError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=self.state.ready)

    @_rpc(service_pb2.ModelMetadataResponse)
    async def ModelMetadata(self, request: Any, context: Any) -> service_pb2.ModelMetadataResponse:
        mv = self.core.get_version(request.name, request.version)
        record = self.core.models[mv.name]
        batch = [-1] if mv.max_batch_size > 0 else []
        msg = service_pb2.ModelMetadataResponse(
            name=mv.name,
            versions=[str(v) for v in sorted(record.versions)],
            platform=mv.config.platform or mv.config.backend,
        )
        for spec, target in ((mv.inputs, msg.inputs), (mv.outputs, msg.outputs)):
            for s in spec.values():
                target.add(name=s.name, datatype=s.datatype, shape=batch + list(s.dims))
        return msg

    @_rpc(service_pb2.ModelConfigResponse)
    async def ModelConfig(self, request: Any, context: Any) -> service_pb2.ModelConfigResponse:
        mv = self.core.get_version(request.name, request.version)
        return service_pb2.ModelConfigResponse(config=mv.config)

    @_rpc(service_pb2.ModelStatisticsResponse)
    async def ModelStatistics(
        self, request: Any, context: Any
    ) -> service_pb2.ModelStatisticsResponse:
        msg = service_pb2.ModelStatisticsResponse()
        if request.name:
            if request.version:
                versions = [self.core.get_version(request.name, request.version)]
            else:
                self.core.get_version(request.name)  # NotFound / Unavailable if not loaded
                versions = list(self.core.models[request.name].versions.values())
        else:
            versions = [v for r in self.core.models.values() for v in r.versions.values()]
        msg.model_stats.extend(v.stats.to_proto() for v in versions)
        return msg

    # ------------------------------------------------------------------ repository
    @_rpc(service_pb2.RepositoryIndexResponse)
    async def RepositoryIndex(
        self, request: Any, context: Any
    ) -> service_pb2.RepositoryIndexResponse:
        msg = service_pb2.RepositoryIndexResponse()
        names = sorted(set(self.core.repository.model_names()) | set(self.core.models))
        for name in names:
            record = self.core.models.get(name)
            if record is not None and record.versions:
                for v in sorted(record.versions):
                    msg.models.add(name=name, version=str(v), state=record.state)
            elif not request.ready:
                state = record.state if record is not None else "UNAVAILABLE"
                reason = record.reason if record is not None else "not loaded"
                msg.models.add(name=name, state=state, reason=reason)
        return msg

    @_rpc(service_pb2.RepositoryModelLoadResponse)
    async def RepositoryModelLoad(
        self, request: Any, context: Any
    ) -> service_pb2.RepositoryModelLoadResponse:
        self.state.check_model_control("load")
        config = None
        if request.parameters:
            params = decode_parameters(request.parameters)
            if any(k.startswith("file:") for k in params):
                raise UnimplementedError(
                    "loading with 'file:' parameters (model files sent in the request) is not "
                    "supported; put the files in the model repository and load by name"
                )
            if "config" in params:
                text = params["config"]
                if not isinstance(text, str):
                    raise InvalidArgumentError("load parameter 'config' must be a JSON string")
                source = f"load of model '{request.model_name}': config parameter"
                config = parse_model_config_json(text, source)
        await self.core.load(request.model_name, config=config)
        return service_pb2.RepositoryModelLoadResponse()

    @_rpc(service_pb2.RepositoryModelUnloadResponse)
    async def RepositoryModelUnload(
        self, request: Any, context: Any
    ) -> service_pb2.RepositoryModelUnloadResponse:
        self.state.check_model_control("unload")
        await self.core.unload(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    # ------------------------------------------------------------------ inference
    @_rpc(bytes)
    async def ModelInfer(self, request: Any, context: Any) -> bytes:
        if not self.state.accepting:
            raise UnavailableError("server is shutting down")
        response = await self.core.infer(decode_infer_request(request, self.core.shared_memory))
        return encode_infer_response(response)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[bytes]:
        """Bidirectional stream: requests run concurrently, responses go out as they finish."""
        out: asyncio.Queue[bytes | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        tasks: set[asyncio.Task[None]] = set()

        async def one(request: Any) -> None:
            try:
                if not self.state.accepting:
                    raise UnavailableError("server is shutting down")
                req = decode_infer_request(request, self.core.shared_memory)
                resp = await self.core.infer(req)
                await out.put(_stream_response(encode_infer_response(resp)))
            except PysonicError as err:
                await out.put(_stream_error(request, err.message))
            except Exception:
                log.exception("internal error in ModelStreamInfer (request id %r)", request.id)
                await out.put(_stream_error(request, "internal error; see the server log"))
            finally:
                window.release()

        async def reader() -> None:
            try:
                async for request in request_iterator:
                    await window.acquire()
                    task = asyncio.create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                await out.put(None)

        reading = asyncio.create_task(reader())
        try:
            while (item := await out.get()) is not None:
                yield item
        finally:
            reading.cancel()
            for t in list(tasks):
                t.cancel()

    # ------------------------------------------------------------------ shared memory
    @_rpc(service_pb2.SystemSharedMemoryStatusResponse)
    async def SystemSharedMemoryStatus(
        self, request: Any, context: Any
    ) -> service_pb2.SystemSharedMemoryStatusResponse:
        msg = service_pb2.SystemSharedMemoryStatusResponse()
        for s in self.core.shared_memory.status(request.name):
            msg.regions[s.name].CopyFrom(
                service_pb2.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=s.name, key=s.key, offset=s.offset, byte_size=s.byte_size
                )
            )
        return msg

    @_rpc(service_pb2.SystemSharedMemoryRegisterResponse)
    async def SystemSharedMemoryRegister(
        self, request: Any, context: Any
    ) -> service_pb2.SystemSharedMemoryRegisterResponse:
        self.core.shared_memory.register(
            request.name, request.key, request.offset, request.byte_size
        )
        return service_pb2.SystemSharedMemoryRegisterResponse()

    @_rpc(service_pb2.SystemSharedMemoryUnregisterResponse)
    async def SystemSharedMemoryUnregister(
        self, request: Any, context: Any
    ) -> service_pb2.SystemSharedMemoryUnregisterResponse:
        self.core.shared_memory.unregister(request.name)
        return service_pb2.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, CUDA_UNSUPPORTED)

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, CUDA_UNSUPPORTED)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, CUDA_UNSUPPORTED)

    # ------------------------------------------------------------------ not provided (yet)
    async def _unimplemented(self, what: str, context: Any) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{what} is not implemented by this server"
        )

    async def TraceSetting(self, request: Any, context: Any) -> None:
        await self._unimplemented("trace settings", context)

    async def LogSettings(self, request: Any, context: Any) -> None:
        await self._unimplemented("log settings", context)


def _stream_response(infer_response: bytes) -> bytes:
    """ModelStreamInferResponse wire bytes around an encoded ``infer_response`` (field 2)."""
    return b"".join((_STREAM_INFER_RESPONSE_TAG, varint(len(infer_response)), infer_response))


_STREAM_INFER_RESPONSE_TAG = bytes([(2 << 3) | 2])


def _stream_error(request: Any, message: str) -> bytes:
    return service_pb2.ModelStreamInferResponse(
        error_message=message,
        infer_response=service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    ).SerializeToString()


#: Methods whose handlers return serialized bytes rather than messages.
_WIRE_BYTES_RESPONSES = frozenset({"ModelInfer", "ModelStreamInfer"})


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register every GRPCInferenceService method of ``servicer`` on ``server``."""
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for method in service.methods:
        request_cls = getattr(service_pb2, method.input_type.name)
        response_cls = getattr(service_pb2, method.output_type.name)
        make = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=request_cls.FromString,
            response_serializer=(
                None if method.name in _WIRE_BYTES_RESPONSES else response_cls.SerializeToString
            ),
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)

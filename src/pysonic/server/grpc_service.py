"""Triton's ``GRPCInferenceService`` on grpc.aio: thin handlers over :class:`InferenceCore`.

The answers come from :mod:`pysonic.server.introspection` (shared with the HTTP app) and
:meth:`InferenceCore.infer`. Every handler maps ``PysonicError`` to its gRPC status through
:func:`pysonic.errors.grpc_status`; anything else becomes INTERNAL and is logged once with the
request id. RPCs this server does not provide (CUDA shared memory, trace, logging settings)
answer UNIMPLEMENTED with a message.

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

from pysonic.errors import PysonicError, UnavailableError, grpc_status
from pysonic.protocol.grpc_codec import (
    decode_infer_request,
    decode_parameters,
    encode_infer_response,
    varint,
)
from pysonic.protocol.shm import CUDA_UNSUPPORTED
from pysonic.server import introspection as answers
from pysonic.server.admission import (
    CLIENT_ID_HEADER,
    Admission,
    peer_address,
    shared_memory_bytes,
)
from pysonic.server.core import InferenceCore
from pysonic.server.state import ServerState

__all__ = ["InferenceServicer", "add_to_server"]

log = logging.getLogger(__name__)

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

    def __init__(
        self, core: InferenceCore, state: ServerState, admission: Admission | None = None
    ) -> None:
        self.core = core
        self.state = state
        #: in-flight limits shared with the HTTP app (a private, unlimited one if not given)
        self.admission = admission or Admission()

    def _admit(self, request: Any, context: Any) -> Any:
        """Admission for one ModelInfer message (already received: gRPC's own message limit
        bounded it), before it is decoded and queued."""
        admission = self.admission
        client = _grpc_client(context) if admission.tracks_clients else ""
        return admission.admit(client, request.ByteSize())

    # ------------------------------------------------------------------ health & metadata
    @_rpc(service_pb2.ServerLiveResponse)
    async def ServerLive(self, request: Any, context: Any) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=self.state.live)

    @_rpc(service_pb2.ServerReadyResponse)
    async def ServerReady(self, request: Any, context: Any) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=answers.server_ready(self.core, self.state))

    @_rpc(service_pb2.ServerMetadataResponse)
    async def ServerMetadata(
        self, request: Any, context: Any
    ) -> service_pb2.ServerMetadataResponse:
        return answers.server_metadata()

    @_rpc(service_pb2.ModelReadyResponse)
    async def ModelReady(self, request: Any, context: Any) -> service_pb2.ModelReadyResponse:
        ready = answers.model_ready(self.core, self.state, request.name, request.version)
        return service_pb2.ModelReadyResponse(ready=ready)

    @_rpc(service_pb2.ModelMetadataResponse)
    async def ModelMetadata(self, request: Any, context: Any) -> service_pb2.ModelMetadataResponse:
        return answers.model_metadata(self.core, request.name, request.version)

    @_rpc(service_pb2.ModelConfigResponse)
    async def ModelConfig(self, request: Any, context: Any) -> service_pb2.ModelConfigResponse:
        return answers.model_config(self.core, request.name, request.version)

    @_rpc(service_pb2.ModelStatisticsResponse)
    async def ModelStatistics(
        self, request: Any, context: Any
    ) -> service_pb2.ModelStatisticsResponse:
        return answers.model_statistics(self.core, request.name, request.version)

    # ------------------------------------------------------------------ repository
    @_rpc(service_pb2.RepositoryIndexResponse)
    async def RepositoryIndex(
        self, request: Any, context: Any
    ) -> service_pb2.RepositoryIndexResponse:
        return answers.repository_index(self.core, request.ready)

    @_rpc(service_pb2.RepositoryModelLoadResponse)
    async def RepositoryModelLoad(
        self, request: Any, context: Any
    ) -> service_pb2.RepositoryModelLoadResponse:
        params = decode_parameters(request.parameters) if request.parameters else {}
        await answers.load_model(self.core, self.state, request.model_name, params)
        return service_pb2.RepositoryModelLoadResponse()

    @_rpc(service_pb2.RepositoryModelUnloadResponse)
    async def RepositoryModelUnload(
        self, request: Any, context: Any
    ) -> service_pb2.RepositoryModelUnloadResponse:
        await answers.unload_model(self.core, self.state, request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    # ------------------------------------------------------------------ inference
    @_rpc(bytes)
    async def ModelInfer(self, request: Any, context: Any) -> bytes:
        if not self.state.accepting:
            raise UnavailableError("server is shutting down")
        with self._admit(request, context) as ticket:
            req = decode_infer_request(request, self.core.shared_memory)
            ticket.grow(shared_memory_bytes(req))
            response = await self.core.infer(req)
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
                with self._admit(request, context) as ticket:
                    req = decode_infer_request(request, self.core.shared_memory)
                    ticket.grow(shared_memory_bytes(req))
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


def _grpc_client(context: Any) -> str:
    """The client's identity: its ``pysonic-client-id`` metadata, else its IP address."""
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_ID_HEADER:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return peer_address(context.peer())


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

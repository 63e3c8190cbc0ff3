"""One inference request at a time over gRPC or HTTP, with perf_analyzer's client-side split.

A sender returns, per request, the time spent preparing it (*client send*: building and
serializing the message) and reading the answer (*client recv*: parsing the response and making
numpy arrays of the outputs); the engine measures the whole request around it, so the rest is
network plus server. gRPC uses pysonic's own codec (``encode_infer_request`` copies each tensor
once) on a raw ``grpc.aio`` channel; HTTP uses tritonclient's request-body and response-body
functions (KServe v2 JSON with Triton's binary extension) on an ``aiohttp`` session.

With ``shared_memory="system"`` inputs live in one system shared-memory region per input set
(written once, registered with the server) and each output in a region per request slot (one per
concurrent request; request-rate mode reuses a ring of slots), as perf_analyzer does; requests
then carry only region names, offsets and sizes (tritonclient.utils.shared_memory).

Example::

    sender = make_sender(spec)
    await sender.open(slots=4)
    send_ns, recv_ns = await sender.infer(set_index=0, slot=0)
    await sender.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pysonic.perf._control import Connection
from pysonic.perf._inputs import TensorInfo
from pysonic.protocol.datatypes import BYTES, element_size, from_numpy_dtype, serialize_bytes

__all__ = ["RequestFailed", "Sender", "TargetSpec", "make_sender"]

_SERVICE = "/inference.GRPCInferenceService/ModelInfer"


class RequestFailed(Exception):
    """A request the server or the transport failed; the engine counts it and goes on."""


@dataclass(frozen=True)
class TargetSpec:
    """Everything a (possibly separate) load process needs to build its sender; picklable."""

    protocol: str
    url: str
    model: str
    input_sets: tuple[dict[str, np.ndarray], ...]
    version: str = ""
    outputs: tuple[TensorInfo, ...] = ()  #: the model's outputs (names, for shm: sizes)
    shared_memory: str = "none"
    output_shm_size: int = 100 * 1024  #: per output whose size the config does not fix
    timeout_s: float | None = 300.0
    max_message_bytes: int = 256 * 1024 * 1024
    batch_size: int = 0  #: rows per request; 0: the first input's first dimension
    binary_data: bool = True  #: HTTP: tensors in Triton's binary extension (False: JSON)
    connection: Connection = field(default_factory=Connection)  #: TLS, extra headers (tokens)

    @property
    def batch(self) -> int:
        if self.batch_size:
            return self.batch_size
        first = next(iter(self.input_sets[0].values()))
        return int(first.shape[0]) if first.ndim else 1


class Sender(Protocol):
    async def open(self, slots: int) -> None: ...
    async def infer(self, set_index: int, slot: int) -> tuple[int, int]: ...
    async def close(self) -> None: ...


def make_sender(spec: TargetSpec) -> Sender:
    if spec.shared_memory not in ("none", "system"):
        msg = f"shared memory must be none or system, got {spec.shared_memory!r}"
        raise ValueError(msg)
    if spec.protocol == "grpc":
        return GrpcSender(spec)
    if spec.protocol == "http":
        return HttpSender(spec)
    msg = f"protocol must be grpc or http, got {spec.protocol!r}"
    raise ValueError(msg)


class _SystemShm:
    """The regions of one load process: inputs per set, outputs per slot; registered over the
    control protocol, unregistered and unlinked on close."""

    def __init__(self, spec: TargetSpec, slots: int) -> None:
        import tritonclient.utils.shared_memory as shm

        from pysonic.perf._control import Control

        self._shm = shm
        self._control = Control(spec.protocol, spec.url, connection=spec.connection)
        self._handles: list[tuple[str, Any]] = []
        tag = f"pysonic_perf_{os.getpid()}_{id(self) & 0xFFFF:x}"
        #: per set: input name -> (region, byte size, offset)
        self.inputs: list[dict[str, tuple[str, int, int]]] = []
        for k, arrays in enumerate(spec.input_sets):
            blobs = {n: _raw(a) for n, a in arrays.items()}
            region = self._region(f"{tag}_in{k}", sum(len(b) for b in blobs.values()))
            offset, where = 0, {}
            handle = self._handles[-1][1]
            for name, blob in blobs.items():
                handle._mpsm_handle.buf[offset : offset + len(blob)] = blob
                where[name] = (region, len(blob), offset)
                offset += len(blob)
            self.inputs.append(where)
        sizes = {o.name: _output_size(o, spec) for o in spec.outputs}
        self.outputs: list[dict[str, tuple[str, int, int]]] = []
        for s in range(slots):
            region = self._region(f"{tag}_out{s}", sum(sizes.values()))
            offset, where = 0, {}
            for name, size in sizes.items():
                where[name] = (region, size, offset)
                offset += size
            self.outputs.append(where)

    def _region(self, name: str, size: int) -> str:
        handle = self._shm.create_shared_memory_region(name, f"/{name}", max(size, 1))
        self._handles.append((name, handle))
        self._control.register_system_shm(name, f"/{name}", max(size, 1))
        return name

    def handle(self, region: str) -> Any:
        return next(h for n, h in self._handles if n == region)

    def read(self, region: str, offset: int, datatype: str, shape: list[int]) -> np.ndarray:
        from pysonic.protocol.datatypes import to_numpy_dtype

        if datatype == BYTES:
            return self._shm.get_contents_as_numpy(self.handle(region), np.object_, shape, offset)
        buf = self.handle(region)._mpsm_handle.buf
        dtype = to_numpy_dtype(datatype)
        return np.frombuffer(buf, dtype, math.prod(shape), offset).reshape(shape)

    def close(self) -> None:
        for name, handle in self._handles:
            # the server may be gone already: unlink the region regardless
            with contextlib.suppress(Exception):
                self._control.unregister_system_shm(name)
            self._shm.destroy_shared_memory_region(handle)
        self._handles.clear()
        self._control.close()


def _raw(arr: np.ndarray) -> bytes:
    if from_numpy_dtype(arr.dtype) == BYTES:
        return serialize_bytes(arr)
    return np.ascontiguousarray(arr).tobytes()


def _output_size(o: TensorInfo, spec: TargetSpec) -> int:
    size = element_size(o.datatype)
    if not size or any(d < 0 for d in o.dims):
        return spec.output_shm_size
    return size * math.prod(o.dims) * spec.batch


class GrpcSender:
    """ModelInfer over a raw grpc.aio channel: bytes in, bytes out, both sides timed."""

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec
        self._channel: Any = None
        self._shm: _SystemShm | None = None

    async def open(self, slots: int) -> None:
        import grpc
        from tritonclient.grpc import service_pb2

        from pysonic.protocol.types import InferRequest, InferTensor, RequestedOutput

        spec = self.spec
        if spec.shared_memory == "system":
            loop = asyncio.get_running_loop()
            self._shm = await loop.run_in_executor(None, _SystemShm, spec, max(1, slots))
        self._requests = [
            InferRequest(
                spec.model,
                [
                    InferTensor(n, from_numpy_dtype(a.dtype), tuple(a.shape), a)
                    for n, a in arrays.items()
                ],
                model_version=spec.version,
            )
            for arrays in spec.input_sets
        ]
        self._headers: list[list[bytes]] = []
        if self._shm is not None:  # header-only messages: one per (set, slot)
            for k, req in enumerate(self._requests):
                per_slot = []
                for slot_outputs in self._shm.outputs:
                    msg = service_pb2.ModelInferRequest(
                        model_name=spec.model, model_version=spec.version
                    )
                    for t in req.inputs:
                        inp = msg.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
                        _shm_params(inp.parameters, self._shm.inputs[k][t.name])
                    for name, where in slot_outputs.items():
                        _shm_params(msg.outputs.add(name=name).parameters, where)
                    per_slot.append(msg.SerializeToString())
                self._headers.append(per_slot)
        else:
            for req in self._requests:
                req.outputs = [RequestedOutput(o.name) for o in spec.outputs]
        options = [
            ("grpc.max_receive_message_length", spec.max_message_bytes),
            ("grpc.max_send_message_length", spec.max_message_bytes),
        ]
        if spec.connection.tls:
            self._channel = grpc.aio.secure_channel(
                spec.url, spec.connection.grpc_credentials(), options=options
            )
        else:
            self._channel = grpc.aio.insecure_channel(spec.url, options=options)
        self._metadata = spec.connection.grpc_metadata
        self._call = self._channel.unary_unary(
            _SERVICE, request_serializer=None, response_deserializer=None
        )
        self._rpc_error = grpc.aio.AioRpcError
        self._parse = service_pb2.ModelInferResponse.FromString

    async def infer(self, set_index: int, slot: int) -> tuple[int, int]:
        from pysonic.protocol.grpc_codec import decode_infer_response

        now = time.perf_counter_ns
        t0 = now()
        shm = self._shm
        if shm is None:
            from pysonic.protocol.grpc_codec import encode_infer_request

            payload = encode_infer_request(self._requests[set_index])
        else:
            slot %= len(shm.outputs)
            payload = self._headers[set_index][slot]
        t1 = now()
        try:
            raw = await self._call(payload, timeout=self.spec.timeout_s, metadata=self._metadata)
        except self._rpc_error as err:
            raise RequestFailed(f"{err.code().name}: {err.details()}") from None
        t2 = now()
        msg = self._parse(raw)
        if shm is None:
            decode_infer_response(msg)
        else:
            for out in msg.outputs:
                region, _, offset = shm.outputs[slot][out.name]
                shm.read(region, offset, out.datatype, list(out.shape))
        return t1 - t0, now() - t2

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if self._shm is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._shm.close)
            self._shm = None


def _shm_params(params: Any, where: tuple[str, int, int]) -> None:
    region, size, offset = where
    params["shared_memory_region"].string_param = region
    params["shared_memory_byte_size"].int64_param = size
    if offset:
        params["shared_memory_offset"].int64_param = offset


class HttpSender:
    """POST /v2/models/<m>/infer with Triton's binary extension over one aiohttp session."""

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec
        self._session: Any = None
        self._shm: _SystemShm | None = None

    async def open(self, slots: int) -> None:
        try:
            import aiohttp
            import tritonclient.http as httpclient
        except ImportError as err:  # pragma: no cover - depends on the install
            msg = "-i http needs tritonclient[http] and aiohttp: pip install 'tritonclient[http]'"
            raise ModuleNotFoundError(msg) from err
        from urllib.parse import quote

        spec = self.spec
        if spec.shared_memory == "system":
            loop = asyncio.get_running_loop()
            self._shm = await loop.run_in_executor(None, _SystemShm, spec, max(1, slots))
        self._client_cls = httpclient.InferenceServerClient
        self._inputs: list[list[Any]] = []
        for k, arrays in enumerate(spec.input_sets):
            inputs = []
            for name, arr in arrays.items():
                i = httpclient.InferInput(name, list(arr.shape), from_numpy_dtype(arr.dtype))
                if self._shm is not None:
                    region, size, offset = self._shm.inputs[k][name]
                    i.set_shared_memory(region, size, offset)
                else:
                    i.set_data_from_numpy(arr, binary_data=spec.binary_data)
                inputs.append(i)
            self._inputs.append(inputs)
        self._outputs: list[list[Any] | None] = [None]
        if not spec.binary_data and self._shm is None:  # outputs as JSON too
            self._outputs = [
                [httpclient.InferRequestedOutput(o.name, binary_data=False) for o in spec.outputs]
            ]
        if self._shm is not None:
            self._outputs = []
            for slot_outputs in self._shm.outputs:
                outs = []
                for name, (region, size, offset) in slot_outputs.items():
                    o = httpclient.InferRequestedOutput(name, binary_data=True)
                    o.set_shared_memory(region, size, offset)
                    outs.append(o)
                self._outputs.append(outs)
        path = f"/v2/models/{quote(spec.model)}"
        if spec.version:
            path += f"/versions/{quote(spec.version)}"
        conn = spec.connection
        self._uri = f"{'https' if conn.tls else 'http'}://{spec.url}{path}/infer"
        timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=conn.ssl_context() if conn.tls else False),
            timeout=timeout,
        )
        # identity: aiohttp asks for gzip by default, and the server then compresses every
        # response (measured: 9 ms of gzip per 144 KB output), which perf_analyzer never asks for
        self._base_headers = {**conn.header_dict, "Accept-Encoding": "identity"}
        self._client_error = (aiohttp.ClientError, asyncio.TimeoutError)

    async def infer(self, set_index: int, slot: int) -> tuple[int, int]:
        now = time.perf_counter_ns
        t0 = now()
        outputs = self._outputs[slot % len(self._outputs)]
        body, json_size = self._client_cls.generate_request_body(self._inputs[set_index], outputs)
        headers = self._base_headers.copy()
        if json_size is not None:
            headers["Inference-Header-Content-Length"] = str(json_size)
        t1 = now()
        try:
            async with self._session.post(self._uri, data=body, headers=headers) as resp:
                raw = await resp.read()
                status = resp.status
                header_length = resp.headers.get("Inference-Header-Content-Length")
        except self._client_error as err:
            raise RequestFailed(f"{type(err).__name__}: {err}") from None
        t2 = now()
        if status != 200:
            raise RequestFailed(f"HTTP {status}: {raw[:300].decode(errors='replace')}")
        result = self._client_cls.parse_response_body(
            raw, header_length=int(header_length) if header_length else None
        )
        shm = self._shm
        for out in result.get_response().get("outputs", []):
            if shm is None:
                result.as_numpy(out["name"])
            else:
                region, _, offset = shm.outputs[slot % len(shm.outputs)][out["name"]]
                shm.read(region, offset, out["datatype"], list(out["shape"]))
        return t1 - t0, now() - t2

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._shm is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._shm.close)
            self._shm = None

"""System shared memory: registered POSIX shm regions, read and written without extra copies.

A client (``tritonclient.utils.shared_memory``) creates a POSIX shared-memory object with
``shm_open`` (it appears as ``/dev/shm/<key>``), registers a window of it under a name, then
sends requests whose tensors say "my data is at ``offset`` in region ``name``, ``byte_size``
bytes" instead of carrying the bytes. :class:`SharedMemoryRegistry` owns those mappings; the
codecs of both transports call the functions below, so gRPC and HTTP share one implementation:

* :func:`shared_memory_ref` parses and type-checks a tensor's ``shared_memory_*`` parameters;
* :func:`read_input` turns a reference into the input array: sizes checked against shape x
  datatype *before* the region is touched, then ``np.frombuffer`` over a read-only view of the
  mapping (BYTES tensors through the bounds-checked deserializer);
* :func:`output_target` resolves a requested output's region up front (unknown region or bad
  bounds fail before any compute); :func:`write_outputs` copies each computed output once, from
  the backend's array into the region, and marks the response tensor (:func:`in_shared_memory`)
  so encoders send no data for it, only the ``shared_memory_*`` parameters.

Lifetime of a mapping (the choice, and why): unregistering removes the name at once (new
requests fail) and then tries ``mmap.close()``. Python's mmap refuses to close while any
buffer exported from it is alive (``BufferError``) -- exactly the case of a request still
computing on a view. Then the mapping simply stays alive, held by those views, and is unmapped
(and its file descriptor closed) by the mmap object's deallocation when the last view goes. So
a request in flight never touches unmapped memory (no crash), an idle region is unmapped at
once (no fd or address-space leak), and there is no copy-on-unregister cost. Triton does the
same with a reference count ("will be unregistered after in-flight requests complete").

Residual risk, shared with Triton: a client that *shrinks* its shm object (``ftruncate``) after
registering can make later accesses fault (SIGBUS). Every :meth:`SharedMemoryRegistry.view`
re-checks the object's size (one ``fstat``), which catches it unless the shrink races the request.

For the HTTP frontend (``/v2/systemsharedmemory/...``), with ``registry = core.shared_memory``::

    POST .../region/{name}/register   {"key", "offset", "byte_size"}
         -> registry.register(name, body["key"], body.get("offset", 0), body["byte_size"])
    POST .../region/{name}/unregister -> registry.unregister(name)
    POST /v2/systemsharedmemory/unregister -> registry.unregister()         (all regions)
    GET  .../region/{name}/status     -> [s.to_json() for s in registry.status(name)]
    GET  /v2/systemsharedmemory/status -> [s.to_json() for s in registry.status()]
    /v2/cudasharedmemory/...           -> raise UnimplementedError(CUDA_UNSUPPORTED)
    infer input with shm parameters    -> data = read_input(registry, name, datatype, shape, ref)
    requested output with parameters   -> RequestedOutput(name, params, shm=output_target(...))
    response tensor t                  -> if in_shared_memory(t): no data, t.parameters only

Every failure is a :class:`pysonic.errors.PysonicError` (status mapping as everywhere else).

Example::

    registry = SharedMemoryRegistry(max_total_bytes=1 << 30)
    registry.register("input_data", "/input_simple", 0, 64)
    x = read_input(registry, "INPUT0", "FP32", (1, 16), SharedMemoryRef("input_data", 64))
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pysonic.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from pysonic.protocol.datatypes import BYTES, deserialize_bytes, serialize_bytes, to_numpy_dtype
from pysonic.protocol.types import InferResponse, InferTensor, RequestedOutput

__all__ = [
    "CUDA_UNSUPPORTED",
    "DEFAULT_MAX_TOTAL_BYTES",
    "SHM_PARAMETERS",
    "RegionStatus",
    "SharedMemoryRef",
    "SharedMemoryRegistry",
    "SharedMemoryTarget",
    "in_shared_memory",
    "output_target",
    "read_input",
    "shared_memory_ref",
    "write_outputs",
]

log = logging.getLogger(__name__)

#: Tensor parameters that place a tensor's data in a registered region.
SHM_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")

#: Default cap on the bytes mapped by all registered regions together (address space, not RAM).
DEFAULT_MAX_TOTAL_BYTES = 64 << 30

#: The answer to every CUDA shared-memory call (no CUDA IPC support in pysonic).
CUDA_UNSUPPORTED = (
    "CUDA shared memory is not supported by this server (pysonic has no CUDA IPC support); "
    "use system shared memory (tritonclient.utils.shared_memory) or send tensors in the request"
)

_SHM_DIR = Path("/dev/shm")
_NAME_MAX = 255


@dataclass(frozen=True, slots=True)
class RegionStatus:
    """A registered region as the status endpoints report it."""

    name: str
    key: str
    offset: int
    byte_size: int

    def to_json(self) -> dict[str, Any]:
        """The HTTP status entry: ``{"name", "key", "offset", "byte_size"}``."""
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}  # fmt: skip


@dataclass(frozen=True, slots=True)
class SharedMemoryRef:
    """Where a tensor's data lies: ``byte_size`` bytes at ``offset`` in region ``region``."""

    region: str
    byte_size: int
    offset: int = 0

    def parameters(self, byte_size: int | None = None) -> dict[str, Any]:
        """The ``shared_memory_*`` parameters for this reference (optionally another size)."""
        return {
            "shared_memory_region": self.region,
            "shared_memory_byte_size": self.byte_size if byte_size is None else byte_size,
            "shared_memory_offset": self.offset,
        }


@dataclass(slots=True)
class SharedMemoryTarget:
    """A requested output's destination: the reference and a writable view of its bytes.

    Holding the view keeps the mapping alive until the response is written, even if the
    region is unregistered meanwhile."""

    ref: SharedMemoryRef
    view: memoryview


class _Region:
    __slots__ = ("base", "mm", "status")

    def __init__(self, status: RegionStatus, mm: mmap.mmap, base: int) -> None:
        self.status = status
        self.mm = mm
        self.base = base  # position of the region's offset 0 inside the mapping


class SharedMemoryRegistry:
    """Named windows of POSIX shared-memory objects, mapped once, viewed per request.

    ``max_total_bytes`` caps what all regions map together (RESOURCE_EXHAUSTED past it);
    ``allowed_key_prefixes`` (None = any) restricts which shm objects clients may name, matched
    against the key without its leading ``/`` -- the hook for deployments that must keep
    clients off other processes' shared memory. Thread-safe.

    Example::

        registry = SharedMemoryRegistry(allowed_key_prefixes=["sonic_"])
        registry.register("out", "/sonic_job42_out", 0, 4096)
        view = registry.view("out", 0, 64, writable=True)
    """

    def __init__(
        self,
        *,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
        allowed_key_prefixes: Sequence[str] | None = None,
        shm_dir: Path = _SHM_DIR,
    ) -> None:
        self.max_total_bytes = max_total_bytes
        self.allowed_key_prefixes = (
            None if allowed_key_prefixes is None else tuple(allowed_key_prefixes)
        )
        self._dir = Path(shm_dir)
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    @property
    def mapped_bytes(self) -> int:
        """Bytes mapped by the registered regions."""
        return sum(r.status.byte_size for r in self._regions.values())

    # ------------------------------------------------------------------ control
    def register(self, name: str, key: str, offset: int, byte_size: int) -> RegionStatus:
        """Map ``byte_size`` bytes at ``offset`` of shm object ``key`` under ``name``."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("shared memory region name must be a non-empty string")
        what = f"failed to register shared memory region '{name}'"
        filename = self._check_key(key, what)
        offset = _non_negative(offset, "offset", what)
        byte_size = _non_negative(byte_size, "byte_size", what)
        if byte_size == 0:
            raise InvalidArgumentError(f"{what}: byte_size must be positive")
        with self._lock:
            if name in self._regions:
                msg = f"shared memory region '{name}' already in manager"
                raise AlreadyExistsError(msg)
            if self.mapped_bytes + byte_size > self.max_total_bytes:
                msg = (
                    f"{what}: {byte_size} bytes would exceed the server's shared-memory limit "
                    f"({self.mapped_bytes} of {self.max_total_bytes} bytes already mapped)"
                )
                raise ResourceExhaustedError(msg)
            mm, base = self._map(filename, key, offset, byte_size, what)
            status = RegionStatus(name, key, offset, byte_size)
            self._regions[name] = _Region(status, mm, base)
        log.debug("registered shared memory region '%s' (%s, %d bytes)", name, key, byte_size)
        return status

    def _check_key(self, key: object, what: str) -> str:
        if not isinstance(key, str):
            raise InvalidArgumentError(f"{what}: key must be a string")
        filename = key.lstrip("/")  # shm_open's rule: leading slashes are not part of the name
        if (
            not filename
            or "/" in filename
            or "\0" in filename
            or filename in (".", "..")
            or len(filename) > _NAME_MAX
        ):
            msg = f"{what}: invalid shared memory key '{key}' (expected '/name', no other '/')"
            raise InvalidArgumentError(msg)
        prefixes = self.allowed_key_prefixes
        if prefixes is not None and not filename.startswith(prefixes):
            msg = f"{what}: key '{key}' is not allowed (allowed prefixes: {', '.join(prefixes)})"
            raise PermissionDeniedError(msg)
        return filename

    def _map(
        self, filename: str, key: str, offset: int, byte_size: int, what: str
    ) -> tuple[mmap.mmap, int]:
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(self._dir / filename, flags)
        except OSError as err:
            msg = f"{what}: unable to open shared memory object '{key}': {err.strerror}"
            raise InvalidArgumentError(msg) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArgumentError(f"{what}: '{key}' is not a shared memory object")
            if offset + byte_size > info.st_size:
                msg = (
                    f"{what}: offset {offset} + byte_size {byte_size} exceeds the size of "
                    f"shared memory object '{key}' ({info.st_size} bytes)"
                )
                raise InvalidArgumentError(msg)
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            try:
                mm = mmap.mmap(fd, offset + byte_size - start, offset=start)
            except OSError as err:
                msg = f"{what}: unable to map '{key}': {err.strerror}"
                raise InvalidArgumentError(msg) from None
        finally:
            os.close(fd)  # the mmap object holds its own duplicate until it is closed
        return mm, offset - start

    def status(self, name: str = "") -> list[RegionStatus]:
        """Every region (``name`` empty) or the one named; NOT_FOUND for an unknown name."""
        with self._lock:
            if not name:
                return [r.status for r in self._regions.values()]
            region = self._regions.get(name)
        if region is None:
            msg = f"Unable to find system shared memory region: '{name}'"
            raise NotFoundError(msg)
        return [region.status]

    def unregister(self, name: str = "") -> None:
        """Forget ``name`` (every region if empty); unknown names are a no-op, as in Triton."""
        with self._lock:
            if name:
                region = self._regions.pop(name, None)
                regions = [] if region is None else [region]
            else:
                regions = list(self._regions.values())
                self._regions.clear()
        for region in regions:
            try:
                region.mm.close()
            except BufferError:
                # In-flight requests still hold views: the mapping is released with the last one.
                log.debug("region '%s' unmaps when its last request ends", region.status.name)
            log.debug("unregistered shared memory region '%s'", region.status.name)

    def close(self) -> None:
        """Unregister every region (server shutdown)."""
        self.unregister()

    # ------------------------------------------------------------------ data path
    def view(self, name: str, offset: int, byte_size: int, *, writable: bool) -> memoryview:
        """``byte_size`` bytes at ``offset`` in region ``name``, bounds-checked; no copy."""
        region = self._regions.get(name)
        if region is None:
            raise NotFoundError(f"Unable to find shared memory region: '{name}'")
        limit = region.status.byte_size
        if offset < 0 or byte_size < 0 or offset + byte_size > limit:
            msg = (
                f"Invalid offset + byte size for shared memory region: '{name}' "
                f"(offset {offset} + byte_size {byte_size} > region size {limit})"
            )
            raise InvalidArgumentError(msg)
        mm = region.mm
        start = region.base + offset
        try:
            if mm.size() < region.status.offset + limit:
                msg = f"shared memory region '{name}': its shm object shrank below the region"
                raise InvalidArgumentError(msg)
            view = memoryview(mm)[start : start + byte_size]
        except ValueError:  # closed by a concurrent unregister
            raise NotFoundError(f"Unable to find shared memory region: '{name}'") from None
        return view if writable else view.toreadonly()


# ---------------------------------------------------------------------- codec helpers
def shared_memory_ref(params: Mapping[str, Any], label: str) -> SharedMemoryRef | None:
    """The reference in a tensor's parameters, or None; ``label`` names the tensor in errors.

    Types as Triton requires: region a string, byte size and offset non-negative integers;
    byte size is required with a region, and neither may appear without one."""
    region = params.get("shared_memory_region")
    if region is None:
        for key in SHM_PARAMETERS[1:]:
            if key in params:
                msg = f"{label}: '{key}' can not be specified without 'shared_memory_region'"
                raise InvalidArgumentError(msg)
        return None
    if not isinstance(region, str) or not region:
        raise InvalidArgumentError(f"{label}: 'shared_memory_region' must be a non-empty string")
    if "shared_memory_byte_size" not in params:
        msg = f"{label}: 'shared_memory_byte_size' must be specified with 'shared_memory_region'"
        raise InvalidArgumentError(msg)
    byte_size = _non_negative(params["shared_memory_byte_size"], "shared_memory_byte_size", label)
    offset = _non_negative(params.get("shared_memory_offset", 0), "shared_memory_offset", label)
    return SharedMemoryRef(region, byte_size, offset)


def read_input(
    registry: SharedMemoryRegistry,
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    ref: SharedMemoryRef,
) -> np.ndarray:
    """Input ``name`` as an array over the region (read-only view; BYTES parsed, bounds-checked)."""
    count = math.prod(shape)
    if datatype != BYTES:
        try:
            dtype = to_numpy_dtype(datatype)
        except InvalidArgumentError as err:
            raise InvalidArgumentError(f"input '{name}': {err.message}") from None
        expected = count * dtype.itemsize
        if ref.byte_size != expected:
            msg = (
                f"input '{name}': shared_memory_byte_size is {ref.byte_size}, expected "
                f"{expected} for shape {list(shape)} of {datatype}"
            )
            raise InvalidArgumentError(msg)
        view = registry.view(ref.region, ref.offset, ref.byte_size, writable=False)
        return np.frombuffer(view, dtype).reshape(shape)
    view = registry.view(ref.region, ref.offset, ref.byte_size, writable=False)
    return deserialize_bytes(view, count, name=name).reshape(shape)


def output_target(
    registry: SharedMemoryRegistry, name: str, ref: SharedMemoryRef
) -> SharedMemoryTarget:
    """Resolve a requested output's region now, so a bad one fails before compute."""
    view = registry.view(ref.region, ref.offset, ref.byte_size, writable=True)
    return SharedMemoryTarget(ref, view)


def write_outputs(requested: list[RequestedOutput], response: InferResponse) -> None:
    """Copy each output that has a shared-memory target into it (once), and mark it sent."""
    targets = {o.name: o.shm for o in requested if o.shm is not None}
    if not targets:
        return
    for i, t in enumerate(response.outputs):
        target = targets.get(t.name)
        if target is not None:
            written = _write(t, target)
            params = {**t.parameters, **target.ref.parameters(written)}
            response.outputs[i] = InferTensor(t.name, t.datatype, t.shape, t.data, params)


def _write(t: InferTensor, target: SharedMemoryTarget) -> int:
    capacity = target.ref.byte_size
    if t.datatype == BYTES:
        data = serialize_bytes(t.data)
        size = len(data)
        _check_capacity(t.name, size, capacity)
        target.view[:size] = data
        return size
    arr = t.data
    size = arr.nbytes
    _check_capacity(t.name, size, capacity)
    dst = np.frombuffer(target.view, arr.dtype, count=arr.size).reshape(arr.shape)
    np.copyto(dst, arr)
    return size


def _check_capacity(name: str, size: int, capacity: int) -> None:
    if size > capacity:
        msg = (
            f"shared memory size specified with the request for output '{name}' ({capacity} "
            f"bytes) should be at least {size} bytes to hold the results"
        )
        raise InvalidArgumentError(msg)


def in_shared_memory(t: InferTensor) -> bool:
    """Whether a response tensor was written to shared memory (encoders send no data)."""
    return "shared_memory_region" in t.parameters


def _non_negative(value: object, field: str, label: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        msg = f"{label}: '{field}' must be a non-negative integer, got {value!r}"
        raise InvalidArgumentError(msg)
    return value

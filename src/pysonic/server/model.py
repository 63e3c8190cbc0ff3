"""A loaded model version: its config, backend instances, batcher and statistics.

``prepare`` checks a decoded request against the model's configuration (names, datatypes, shapes,
batch size) and turns it into a :class:`PendingRequest` whose inputs are in config order, so the
batcher can concatenate without looking names up. ``respond`` picks the requested outputs.

Example::

    version = ModelVersion.load(definition, 1)
    pending = version.prepare(request)
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2

from pysonic.backends import InstanceSpec, load_backend_class
from pysonic.backends.base import Backend, BackendRequest
from pysonic.errors import InternalError, InvalidArgumentError, ModelConfigError
from pysonic.protocol.datatypes import config_to_wire
from pysonic.protocol.types import InferRequest, InferResponse, InferTensor
from pysonic.scheduling import BatcherConfig, InstancePool, PendingRequest, make_scheduler
from pysonic.server.stats import ModelStats

__all__ = ["ModelVersion", "TensorSpec", "backend_name"]

_KIND = model_config_pb2.ModelInstanceGroup.Kind


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A config input/output: wire datatype, dims without the batch axis, optional reshape."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None
    optional: bool = False

    @classmethod
    def from_config(
        cls, t: model_config_pb2.ModelInput | model_config_pb2.ModelOutput
    ) -> TensorSpec:
        reshape = tuple(t.reshape.shape) if t.HasField("reshape") else None
        optional = bool(getattr(t, "optional", False))
        datatype = config_to_wire(model_config_pb2.DataType.Name(t.data_type))
        return cls(t.name, datatype, tuple(t.dims), reshape, optional)

    def matches(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.dims) and all(
            d == -1 or d == s for d, s in zip(self.dims, shape, strict=True)
        )


@dataclass(frozen=True, slots=True)
class _InputPlan:
    """The outcome of validating one request signature: inputs in config order (index in the
    request, name, target shape when config reshapes), rows on the batch axis, batching key."""

    inputs: tuple[tuple[int, str, tuple[int, ...] | None], ...]
    rows: int
    shape_key: tuple[tuple[int, ...], ...]


#: Signatures remembered per model version (a client varying its shapes cannot grow it further).
_PLAN_CACHE_SIZE = 256


def backend_name(config: model_config_pb2.ModelConfig) -> str:
    """The backend a config asks for (``backend``, else the legacy ``platform``)."""
    from pysonic.backends import PLATFORM_TO_BACKEND

    if config.backend:
        return config.backend
    if config.platform in PLATFORM_TO_BACKEND:
        return PLATFORM_TO_BACKEND[config.platform]
    msg = f"model '{config.name}': config names no backend or known platform"
    raise ModelConfigError(msg)


class ModelVersion:
    """One version of one model, ready to serve."""

    def __init__(
        self,
        config: model_config_pb2.ModelConfig,
        version: int,
        backends: list[Backend],
        stats: ModelStats,
    ) -> None:
        self.config = config
        self.name = config.name
        self.version = version
        self.version_str = str(version)
        self.backends = backends
        #: the backend sees a batch's requests one by one (Triton's Python backend)
        self.per_request = bool(backends) and backends[0].per_request
        self.stats = stats
        self.max_batch_size = config.max_batch_size
        self.inputs = {t.name: TensorSpec.from_config(t) for t in config.input}
        self.outputs = {t.name: TensorSpec.from_config(t) for t in config.output}
        self.required = [n for n, s in self.inputs.items() if not s.optional]
        self.batcher: InstancePool | None = None
        self.execute_delay_s = _delay_parameter(config)
        self._plans: dict[tuple[tuple[str, str, tuple[int, ...]], ...], _InputPlan] = {}

    @classmethod
    def load(
        cls,
        config: model_config_pb2.ModelConfig,
        version: int,
        path: Path,
        *,
        infer: Callable[..., tuple[dict[str, np.ndarray], Exception | None]] | None = None,
    ) -> ModelVersion:
        """Create every backend instance (blocking: call it from a worker thread).

        ``infer`` is handed to the backends (``InstanceSpec.infer``) for calls to other models."""
        if config.HasField("sequence_batching"):
            msg = f"model '{config.name}': sequence batching is not supported yet"
            raise ModelConfigError(msg)
        if config.HasField("ensemble_scheduling") or config.platform == "ensemble":
            msg = f"model '{config.name}': an ensemble is loaded by the core, not as a backend"
            raise ModelConfigError(msg)
        backend_cls = load_backend_class(backend_name(config))
        groups = list(config.instance_group) or [model_config_pb2.ModelInstanceGroup(count=1)]
        placements: list[tuple[str, int]] = []
        for g in groups:
            kind = _KIND.Name(g.kind)
            gpus = list(g.gpus) or [0]
            devices = gpus if kind == "KIND_GPU" else [0]
            placements.extend((kind, gpu) for _ in range(max(g.count, 1)) for gpu in devices)
        backends: list[Backend] = []
        try:
            for i, (kind, gpu) in enumerate(placements):
                spec = InstanceSpec(
                    model_name=config.name,
                    version=version,
                    version_path=path,
                    config=config,
                    kind=kind,
                    device_id=gpu,
                    instance_index=i,
                    instance_count=len(placements),
                    infer=infer,
                )
                backends.append(backend_cls(spec))
        except BaseException:
            for b in backends:
                b.close()
            raise
        return cls(config, version, backends, ModelStats(config.name, version))

    def start(self, deliver: Callable[[list[PendingRequest]], None], queue_cap: int) -> None:
        """Start the batcher and its instance threads; ``deliver`` gets finished requests."""
        if self.per_request:
            executors = [_requests_executor(b, self.execute_delay_s) for b in self.backends]
        else:
            executors = [_with_delay(b.execute, self.execute_delay_s) for b in self.backends]
        self.batcher = make_scheduler(
            BatcherConfig.from_model_config(self.config, queue_cap=queue_cap),
            executors,
            deliver,
            on_execution=self.stats.record_execution,
            name=f"{self.name}/{self.version}",
            per_request=self.per_request,
        )
        self.batcher.start()

    def stop(self, timeout: float) -> None:
        if self.batcher is not None:
            self.batcher.stop(timeout)
        for b in self.backends:
            b.close()

    # ------------------------------------------------------------------ request path
    def prepare(self, req: InferRequest) -> PendingRequest:
        """Validate ``req`` against the config; raise InvalidArgumentError naming the tensor.

        The checks depend only on the inputs' names, datatypes and shapes, so their outcome (a
        :class:`_InputPlan`) is kept per signature: a stream of like requests is checked once,
        and each request then costs one dict lookup plus its reshapes."""
        tensors = req.inputs
        key = tuple([(t.name, t.datatype, t.shape) for t in tensors])
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(tensors)
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[key] = plan
        inputs = {
            name: tensors[i].data if shape is None else tensors[i].data.reshape(shape)
            for i, name, shape in plan.inputs
        }
        pending = PendingRequest(inputs=inputs, rows=plan.rows, shape_key=plan.shape_key)
        if self.per_request:
            pending.origin = req
        return pending

    def _plan(self, tensors: list[InferTensor]) -> _InputPlan:
        given = {t.name: i for i, t in enumerate(tensors)}
        if len(given) != len(tensors):
            msg = f"model '{self.name}': an input name appears more than once in the request"
            raise InvalidArgumentError(msg)
        for name in given:
            if name not in self.inputs:
                hint = difflib.get_close_matches(name, self.inputs, n=1)
                extra = f"; did you mean '{hint[0]}'?" if hint else ""
                msg = (
                    f"unexpected inference input '{name}' for model '{self.name}' "
                    f"(expected: {', '.join(self.inputs)}){extra}"
                )
                raise InvalidArgumentError(msg)
        missing = [n for n in self.required if n not in given]
        if missing:
            msg = (
                f"model '{self.name}' expects {len(self.required)} inputs, got {len(given)}: "
                f"missing {', '.join(repr(m) for m in missing)}"
            )
            raise InvalidArgumentError(msg)
        batched = self.max_batch_size > 0
        rows = -1
        order: list[tuple[int, str, tuple[int, ...] | None]] = []
        shapes: list[tuple[int, ...]] = []
        for name, spec in self.inputs.items():
            i = given.get(name)
            if i is None:
                continue
            t = tensors[i]
            rows = self._check_tensor(spec, t, rows)
            shape = None
            if spec.reshape is not None:
                new_shape = ((rows,) if batched else ()) + spec.reshape
                shape = _resolve(new_shape, math.prod(t.shape), name)
            order.append((i, name, shape))
            final = t.shape if shape is None else shape
            shapes.append(final[1:] if batched else final)
        return _InputPlan(tuple(order), max(rows, 1), tuple(shapes))

    def _check_tensor(self, spec: TensorSpec, t: InferTensor, rows: int) -> int:
        if t.datatype != spec.datatype:
            msg = (
                f"input '{t.name}' of model '{self.name}': expected datatype "
                f"{spec.datatype}, got {t.datatype}"
            )
            raise InvalidArgumentError(msg)
        shape = t.shape
        if self.max_batch_size > 0:
            if not shape:
                msg = f"input '{t.name}' of model '{self.name}': missing the batch dimension"
                raise InvalidArgumentError(msg)
            batch, shape = shape[0], shape[1:]
            if batch < 1 or batch > self.max_batch_size:
                msg = (
                    f"input '{t.name}' of model '{self.name}': batch size {batch} is outside "
                    f"[1, max_batch_size={self.max_batch_size}]"
                )
                raise InvalidArgumentError(msg)
            if rows not in (-1, batch):
                msg = (
                    f"input '{t.name}' of model '{self.name}': batch size {batch} differs "
                    f"from the other inputs' {rows}"
                )
                raise InvalidArgumentError(msg)
            rows = batch
        if not spec.matches(shape):
            prefix = "[-1] + " if self.max_batch_size > 0 else ""
            msg = (
                f"input '{t.name}' of model '{self.name}': expected shape "
                f"{prefix}{list(spec.dims)}, got {list(t.shape)}"
            )
            raise InvalidArgumentError(msg)
        return rows

    def respond(self, req: InferRequest, pending: PendingRequest) -> InferResponse:
        """Build the response from the batch's outputs (views), honouring requested outputs.

        Requested names were checked by :meth:`check_requested_outputs` before queueing."""
        produced = pending.outputs or {}
        names = [o.name for o in req.outputs] if req.outputs else list(self.outputs)
        outputs = []
        for name in names:
            arr = produced.get(name)
            if arr is None:
                msg = f"model '{self.name}' did not produce its configured output '{name}'"
                raise InternalError(msg)
            spec = self.outputs[name]
            if spec.reshape is not None:
                lead = (arr.shape[0],) if self.max_batch_size > 0 else ()
                arr = arr.reshape(_resolve(lead + spec.dims, arr.size, name))
            outputs.append(InferTensor(name, spec.datatype, arr.shape, arr))
        return InferResponse(self.name, self.version_str, outputs, id=req.id)

    def check_requested_outputs(self, req: InferRequest) -> None:
        for o in req.outputs:
            if o.name not in self.outputs:
                hint = difflib.get_close_matches(o.name, self.outputs, n=1)
                extra = f"; did you mean '{hint[0]}'?" if hint else ""
                msg = (
                    f"unexpected inference output '{o.name}' for model '{self.name}' "
                    f"(outputs: {', '.join(self.outputs)}){extra}"
                )
                raise InvalidArgumentError(msg)


def _delay_parameter(config: model_config_pb2.ModelConfig) -> float:
    """``parameters { key: "execute_delay_ms" }``: sleep before each execution.

    Triton's test backends use this key to make a model slow on purpose; pysonic honours it for
    any backend, for load-balancing and fault tests (a slow server, a saturated queue)."""
    param = config.parameters.get("execute_delay_ms")
    if param is None or not param.string_value:
        return 0.0
    try:
        delay = float(param.string_value)
    except ValueError:
        msg = (
            f"model '{config.name}': execute_delay_ms must be a number, got {param.string_value!r}"
        )
        raise ModelConfigError(msg) from None
    if delay < 0:
        msg = f"model '{config.name}': execute_delay_ms must be >= 0, got {delay}"
        raise ModelConfigError(msg)
    return delay / 1000


def _with_delay(
    execute: Callable[..., dict[str, np.ndarray]], delay: float
) -> Callable[..., dict[str, np.ndarray]]:
    if delay <= 0:
        return execute

    def delayed(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(delay)  # on the instance thread, never the event loop
        return execute(inputs)

    return delayed


def _requests_executor(
    backend: Backend, delay: float
) -> Callable[[list[PendingRequest]], list[dict[str, np.ndarray] | Exception]]:
    """A per-request backend's executor: each queued request becomes one BackendRequest."""

    def run(batch: list[PendingRequest]) -> list[dict[str, np.ndarray] | Exception]:
        if delay > 0:
            time.sleep(delay)  # on the instance thread, never the event loop
        requests = []
        for r in batch:
            origin: InferRequest | None = r.origin
            if origin is None:
                requests.append(BackendRequest(r.inputs))
            else:
                names = tuple(o.name for o in origin.outputs)
                requests.append(BackendRequest(r.inputs, origin.id, names, origin.parameters))
        return backend.execute_requests(requests)

    return run


def _resolve(shape: tuple[int, ...], size: int, name: str) -> tuple[int, ...]:
    known = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        if known == 0 or size % known:
            msg = f"input '{name}': cannot reshape {size} elements to {list(shape)}"
            raise InvalidArgumentError(msg)
        return tuple(size // known if d == -1 else d for d in shape)
    if known != size:
        msg = f"input '{name}': cannot reshape {size} elements to {list(shape)}"
        raise InvalidArgumentError(msg)
    return shape

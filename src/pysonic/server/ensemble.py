"""Ensembles (``platform: "ensemble"``): pipelines of other models, orchestrated on the event loop.

An ensemble owns no backend and no instance: each step is an ordinary inference request into the
composing model's own scheduler, made through the core and awaited, so the composing models batch
ensemble traffic with their direct traffic and nothing computes on the loop. Steps start as soon
as the tensors they read exist (independent steps run concurrently), as Triton's ensemble
scheduler does; the first failing step fails the request with its own error class, the message
naming the ensemble and the step, and cancels the steps still queued.

Everything checkable is checked at load (:meth:`EnsembleVersion.load`), with a
:class:`~pysonic.errors.ModelConfigError` naming the ensemble and step: composing models are
loaded (the core loads missing ones first, as Triton does), ``input_map`` / ``output_map`` keys
exist on them, every tensor is produced exactly once and consumed with the same datatype and a
compatible shape, the ensemble's outputs are produced, the steps form no cycle, and the
ensemble's ``max_batch_size`` fits every composing model's.

Statistics, as Triton reports an ensemble's: ``success`` / ``fail`` are the ensemble requests and
their end-to-end time; ``queue`` and ``compute_*`` add up the composing models' queue and compute
times spent on each successful ensemble request; ``inference_count`` counts its rows and
``execution_count`` its successful requests (one pipeline run each); there are no batch stats.

Example::

    ensemble = EnsembleVersion.load(config, 1, core.lookup_version)
    response = await ensemble.infer(request, core.infer)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import model_config_pb2

from pysonic.errors import InternalError, ModelConfigError, PysonicError
from pysonic.protocol.datatypes import config_to_wire
from pysonic.protocol.types import InferRequest, InferResponse, InferTensor, RequestedOutput
from pysonic.server.model import ModelVersion
from pysonic.server.stats import ModelStats

__all__ = ["EnsembleVersion", "is_ensemble"]

log = logging.getLogger(__name__)

#: (name, version with -1 = newest) -> the loaded ModelVersion; raises ModelConfigError
Lookup = Callable[[str, int], ModelVersion]
#: the core's request path: (request, timing accumulator) -> response
RunStep = Callable[[InferRequest, "list[int] | None"], Awaitable[InferResponse]]


def is_ensemble(config: model_config_pb2.ModelConfig) -> bool:
    return config.platform == "ensemble"


@dataclass(frozen=True, slots=True)
class _Step:
    index: int
    model_name: str
    version: str  # "" = newest
    inputs: tuple[tuple[str, str, str], ...]  # (model input, ensemble tensor, datatype)
    outputs: dict[str, str]  # model output -> ensemble tensor
    label: str


@dataclass(frozen=True, slots=True)
class _Tensor:
    datatype: str
    shape: tuple[int, ...]  # full shape, -1 for the batch axis and variable dims
    producer: str


class EnsembleVersion(ModelVersion):
    """One version of an ensemble: validation, metadata and statistics of a model, no backend."""

    def __init__(
        self, config: model_config_pb2.ModelConfig, version: int, steps: list[_Step]
    ) -> None:
        super().__init__(config, version, [], ModelStats(config.name, version))
        self.steps = steps

    @classmethod
    def load(
        cls, config: model_config_pb2.ModelConfig, version: int, lookup: Lookup
    ) -> EnsembleVersion:
        """Validate the ensemble against the loaded composing models (ModelConfigError)."""
        return cls(config, version, _validate(config, lookup))

    def start(self, deliver: Callable[..., None], queue_cap: int) -> None:
        """Nothing to start: the composing models' schedulers do the work."""

    def stop(self, timeout: float) -> None:
        """Nothing to drain here: in-flight ensemble requests wait on their steps."""

    # ------------------------------------------------------------------ request path
    async def infer(
        self, req: InferRequest, run_step: RunStep, timing: list[int] | None = None
    ) -> InferResponse:
        """Validate ``req``, run the steps, answer with the requested ensemble outputs."""
        start = time.monotonic_ns()
        sums = [0, 0, 0, 0]  # queue, compute input, infer, output (ns) of the steps
        try:
            pending = self.prepare(req)
            self.check_requested_outputs(req)
            tensors: dict[str, np.ndarray] = dict(pending.inputs)
            await self._run_steps(req, tensors, run_step, sums)
            pending.outputs = {name: tensors[name] for name in self.outputs}
            response = self.respond(req, pending)
        except PysonicError:
            self.stats.record_failure(time.monotonic_ns() - start)
            raise
        self.stats.record_ensemble(time.monotonic_ns() - start, pending.rows, sums)
        if timing is not None:
            for i, value in enumerate(sums):
                timing[i] += value
        return response

    async def _run_steps(
        self,
        req: InferRequest,
        tensors: dict[str, np.ndarray],
        run_step: RunStep,
        sums: list[int],
    ) -> None:
        waiting = list(self.steps)
        running: dict[asyncio.Future[InferResponse], _Step] = {}
        try:
            while waiting or running:
                ready = [s for s in waiting if all(t in tensors for _, t, _ in s.inputs)]
                for step in ready:
                    waiting.remove(step)
                if len(ready) == 1 and not running:  # a plain pipeline: no task needed
                    step = ready[0]
                    response = await _guarded(
                        step, run_step(self._request(req, step, tensors), sums)
                    )
                    _collect(step, response, tensors)
                    continue
                for step in ready:
                    call = run_step(self._request(req, step, tensors), sums)
                    running[asyncio.ensure_future(call)] = step
                if not running:
                    msg = f"ensemble '{self.name}': steps {[s.index for s in waiting]} never ran"
                    raise InternalError(msg)
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = running.pop(task)
                    _collect(step, await _guarded(step, task), tensors)
        finally:
            for task in running:
                task.cancel()

    def _request(
        self, req: InferRequest, step: _Step, tensors: dict[str, np.ndarray]
    ) -> InferRequest:
        inputs = [
            InferTensor(key, datatype, tensors[name].shape, tensors[name])
            for key, name, datatype in step.inputs
        ]
        return InferRequest(
            model_name=step.model_name,
            inputs=inputs,
            model_version=step.version,
            id=req.id,
            outputs=[RequestedOutput(key) for key in step.outputs],
            parameters=req.parameters,
        )


async def _guarded(step: _Step, call: Awaitable[InferResponse]) -> InferResponse:
    """Await a step; its error keeps its class and gains the ensemble and step in the message."""
    try:
        return await call
    except PysonicError as err:
        raise type(err)(f"{step.label} failed: {err.message}") from err


def _collect(step: _Step, response: InferResponse, tensors: dict[str, np.ndarray]) -> None:
    for out in response.outputs:
        tensors[step.outputs[out.name]] = out.data


# ---------------------------------------------------------------------- load-time validation
def _full_shape(dims: tuple[int, ...], max_batch_size: int) -> tuple[int, ...]:
    return ((-1,) if max_batch_size > 0 else ()) + tuple(dims)


def _compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def _validate(config: model_config_pb2.ModelConfig, lookup: Lookup) -> list[_Step]:
    name, mbs = config.name, config.max_batch_size
    tensors: dict[str, _Tensor] = {}
    for t in config.input:
        dtype = config_to_wire(model_config_pb2.DataType.Name(t.data_type))
        tensors[t.name] = _Tensor(dtype, _full_shape(tuple(t.dims), mbs), "the ensemble input")
    steps: list[_Step] = []
    consumers: list[tuple[_Step, str, str, _Tensor]] = []  # step, model input, tensor, expected
    for index, step in enumerate(config.ensemble_scheduling.step):
        label = f"ensemble '{name}' step {index} (model '{step.model_name}')"
        if not step.model_name:
            msg = f"ensemble '{name}' step {index}: model_name is empty"
            raise ModelConfigError(msg)
        if step.model_name == name:
            msg = f"{label}: an ensemble cannot contain itself"
            raise ModelConfigError(msg)
        mv = lookup(step.model_name, step.model_version)
        if mbs > 0 and mv.max_batch_size < mbs:
            msg = (
                f"{label}: the ensemble allows batches of {mbs} but model '{mv.name}' allows "
                f"max_batch_size {mv.max_batch_size}"
            )
            raise ModelConfigError(msg)
        _check_keys(label, "input_map", step.input_map, mv.inputs)
        _check_keys(label, "output_map", step.output_map, mv.outputs)
        missing = [n for n in mv.required if n not in step.input_map]
        if missing:
            msg = f"{label}: input_map gives no tensor for the model's inputs {missing}"
            raise ModelConfigError(msg)
        ins = tuple((key, value, mv.inputs[key].datatype) for key, value in step.input_map.items())
        entry = _Step(
            index,
            mv.name,
            "" if step.model_version < 0 else str(mv.version),
            ins,
            dict(step.output_map),
            label,
        )
        for key, value in step.input_map.items():
            spec = mv.inputs[key]
            expected = _Tensor(spec.datatype, _full_shape(spec.dims, mv.max_batch_size), label)
            consumers.append((entry, key, value, expected))
        for key, value in step.output_map.items():
            if value in tensors:
                msg = (
                    f"{label}: output_map writes tensor '{value}', which "
                    f"{tensors[value].producer} already produces"
                )
                raise ModelConfigError(msg)
            spec = mv.outputs[key]
            tensors[value] = _Tensor(
                spec.datatype, _full_shape(spec.dims, mv.max_batch_size), label
            )
        steps.append(entry)
    for step, key, value, expected in consumers:
        _check_flow(f"{step.label} input '{key}'", value, tensors, expected)
    for t in config.output:
        dtype = config_to_wire(model_config_pb2.DataType.Name(t.data_type))
        wanted = _Tensor(dtype, _full_shape(tuple(t.dims), mbs), "the ensemble output")
        _check_flow(f"ensemble '{name}' output '{t.name}'", t.name, tensors, wanted)
    _check_acyclic(name, steps)
    used = {value for _, _, value, _ in consumers}
    for t in config.input:
        if t.name not in used:
            log.warning("ensemble '%s': input '%s' is read by no step", name, t.name)
    return steps


def _check_keys(label: str, what: str, mapping: object, names: dict[str, object]) -> None:
    for key in mapping:  # type: ignore[attr-defined]
        if key not in names:
            msg = f"{label}: {what} key '{key}' is not a tensor of the model ({', '.join(names)})"
            raise ModelConfigError(msg)


def _check_flow(where: str, name: str, tensors: dict[str, _Tensor], expected: _Tensor) -> None:
    source = tensors.get(name)
    if source is None:
        msg = (
            f"{where} reads tensor '{name}', which no step produces and which is not an "
            "ensemble input"
        )
        raise ModelConfigError(msg)
    if source.datatype != expected.datatype:
        msg = (
            f"{where}: tensor '{name}' is {source.datatype} (from {source.producer}) but "
            f"{expected.datatype} is expected"
        )
        raise ModelConfigError(msg)
    if not _compatible(source.shape, expected.shape):
        msg = (
            f"{where}: tensor '{name}' has shape {list(source.shape)} (from {source.producer}) "
            f"but shape {list(expected.shape)} is expected"
        )
        raise ModelConfigError(msg)


def _check_acyclic(name: str, steps: list[_Step]) -> None:
    producer = {tensor: s.index for s in steps for tensor in s.outputs.values()}
    needs = {s.index: {producer[t] for _, t, _ in s.inputs if t in producer} for s in steps}
    done: set[int] = set()
    while len(done) < len(steps):
        ready = [i for i, deps in needs.items() if i not in done and deps <= done]
        if not ready:
            cycle = sorted(i for i in needs if i not in done)
            msg = f"ensemble '{name}': steps {cycle} depend on each other's outputs (a cycle)"
            raise ModelConfigError(msg)
        done.update(ready)

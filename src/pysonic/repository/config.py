"""config.pbtxt <-> ``ModelConfig``: parse, print, normalize and validate, like Triton.

The proto is tritonclient's generated ``inference.ModelConfig``, so what pysonic reads is exactly
what Triton reads, and what the server returns from the model-config endpoint is the same message.
Errors are :class:`~pysonic.errors.ModelConfigError` naming the file (and line for syntax errors),
because a config problem is fixed by editing that file.

Example::

    >>> cfg = parse_model_config('name: "jets" max_batch_size: 8', "jets/config.pbtxt")
    >>> cfg.max_batch_size
    8
    >>> parse_model_config("max_batch_size: x", "jets/config.pbtxt")
    Traceback (most recent call last):
    ...
    pysonic.errors.ModelConfigError: jets/config.pbtxt:1:17: syntax error: ...
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from google.protobuf import json_format, text_format
from tritonclient.grpc.model_config_pb2 import (
    DataType,
    ModelConfig,
    ModelInput,
    ModelInstanceGroup,
    ModelOutput,
)

from pysonic.errors import ModelConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "DEFAULT_INSTANCE_COUNT",
    "config_to_text",
    "normalize_config",
    "parse_model_config",
    "parse_model_config_json",
    "validate_config",
]

#: Instances per group when config.pbtxt gives none (Triton uses 2 for ONNX Runtime on CPU; one
#: ONNX Runtime session already spreads over all cores with its intra-op pool, so one is enough).
DEFAULT_INSTANCE_COUNT = 1

_LOCATION_PREFIX = re.compile(r"^\d+(:\d+)?\s*:\s*")


def parse_model_config(text: str, source: str = "<string>") -> ModelConfig:
    """Parse config.pbtxt text; a syntax error names ``source``, line and column.

    Unknown fields are errors (as in Triton), so a typo never silently drops a setting.
    """
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        line, column = err.GetLine(), err.GetColumn()
        where = source if line is None else f"{source}:{line}"
        if line is not None and column is not None:
            where += f":{column}"
        detail = _LOCATION_PREFIX.sub("", str(err))
        msg = f"{where}: syntax error: {detail}"
        raise ModelConfigError(msg) from err
    return config


def parse_model_config_json(text: str, source: str = "<json>") -> ModelConfig:
    """Parse a model config in protobuf's JSON mapping (Triton's load ``config`` override).

    Field names may be the proto's (``max_batch_size``) or lowerCamel; enums are their names
    (``"TYPE_FP32"``). Unknown fields are errors, as in config.pbtxt.

    Example::

        cfg = parse_model_config_json('{"max_batch_size": 8}', "load override")
    """
    config = ModelConfig()
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as err:
        msg = f"{source}: invalid JSON model config: {err}"
        raise ModelConfigError(msg) from err
    return config


def config_to_text(config: ModelConfig) -> str:
    """config.pbtxt text for ``config`` (round-trips through :func:`parse_model_config`)."""
    return text_format.MessageToString(config)


def normalize_config(config: ModelConfig) -> None:
    """Fill the defaults Triton fills even with ``--strict-model-config`` (in place).

    * ``version_policy`` -> ``latest { num_versions: 1 }``;
    * ``dynamic_batching`` without ``preferred_batch_size`` -> ``[max_batch_size]``;
    * no ``instance_group`` -> one group named after the model, ``KIND_CPU``; each group gets a
      name (``<model>_<index>``), a count (:data:`DEFAULT_INSTANCE_COUNT` when 0), and
      ``KIND_AUTO`` becomes ``KIND_CPU`` (the repository knows no GPUs; write ``KIND_GPU``).
    """
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if (
        config.HasField("dynamic_batching")
        and not config.dynamic_batching.preferred_batch_size
        and config.max_batch_size > 0
    ):
        config.dynamic_batching.preferred_batch_size.append(config.max_batch_size)
    if config.platform == "ensemble":
        return  # ensembles have no instances (Triton rejects instance_group on them)
    if not config.instance_group:
        config.instance_group.add(name=config.name, kind=ModelInstanceGroup.KIND_CPU)
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.count == 0:
            group.count = DEFAULT_INSTANCE_COUNT
        if group.kind == ModelInstanceGroup.KIND_AUTO:
            group.kind = ModelInstanceGroup.KIND_CPU


def validate_config(config: ModelConfig, source: str) -> None:
    """Raise ModelConfigError (prefixed with ``source``) if ``config`` cannot be served.

    Checks what Triton checks at load time that matters for pysonic: name and backend,
    ``max_batch_size``, inputs/outputs (names, datatypes, dims, reshape), version policy,
    dynamic batching (preferred sizes, priorities) and instance groups. Run it on a completed
    and normalized config (see ``load_model_config``).
    """
    for problem in _problems(config):
        msg = f"{source}: {problem}"
        raise ModelConfigError(msg)


def _problems(config: ModelConfig) -> Iterator[str]:
    """Yield what is wrong, first problem first (the caller reports only the first)."""
    if not config.name:
        yield "model configuration must specify 'name'"
    if not config.backend and not config.platform:
        yield f"model '{config.name}': must specify 'backend' or 'platform'"
    if config.max_batch_size < 0:
        yield f"'max_batch_size' must be >= 0, got {config.max_batch_size}"
    yield from _io_problems(config)
    yield from _version_policy_problems(config)
    if config.HasField("dynamic_batching"):
        yield from _dynamic_batching_problems(config)
    yield from _instance_group_problems(config)


def _io_problems(config: ModelConfig) -> Iterator[str]:
    for kind, ios in (("input", config.input), ("output", config.output)):
        if not ios:
            yield f"model '{config.name}' must have at least one {kind}"
        seen: set[str] = set()
        for io in ios:
            if io.name in seen:
                yield f"duplicate {kind} name '{io.name}'"
            seen.add(io.name)
            yield from _tensor_problems(kind, io, config.max_batch_size)


def _tensor_problems(kind: str, io: ModelInput | ModelOutput, max_batch_size: int) -> Iterator[str]:
    if not io.name:
        yield f"every {kind} must specify 'name'"
    label = f"{kind} '{io.name}'"
    if io.data_type == DataType.TYPE_INVALID:
        yield f"{label} must specify 'data_type' (e.g. TYPE_FP32)"
    if not io.dims:
        yield (
            f"{label} must specify 'dims' (for one scalar per batch item write "
            "'dims: [1] reshape: { shape: [] }')"
        )
    if any(d < 1 and d != -1 for d in io.dims):
        yield f"{label} has dims {list(io.dims)}: each must be >= 1, or -1 for a variable size"
    if io.HasField("reshape"):
        shape = list(io.reshape.shape)
        if any(d < 1 and d != -1 for d in shape):
            yield f"{label} has reshape {shape}: each must be >= 1, or -1 for a variable size"
        elif not shape and max_batch_size == 0:
            yield f"{label}: an empty reshape (a scalar) needs max_batch_size > 0"
        elif not _reshape_compatible(list(io.dims), shape):
            yield f"{label}: dims {list(io.dims)} and reshape {shape} hold different element counts"


def _reshape_compatible(dims: list[int], shape: list[int]) -> bool:
    """Triton's rule: the runs of fixed dims between -1 wildcards must hold equal counts.

    ``[2, 4, -1, 6]`` -> ``[8, -1, 1, 6]`` is fine (2*4 == 8, 6 == 1*6); an empty reshape is a
    scalar and needs dims with one element.
    """
    if not shape:
        return -1 not in dims and math.prod(dims) == 1
    return _runs(dims) == _runs(shape)


def _runs(dims: list[int]) -> list[int]:
    runs, count = [], 1
    for d in dims:
        if d == -1:
            runs.append(count)
            count = 1
        else:
            count *= d
    runs.append(count)
    return runs


def _version_policy_problems(config: ModelConfig) -> Iterator[str]:
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "latest" and policy.latest.num_versions < 1:
        yield (
            f"version_policy latest: num_versions must be >= 1, got {policy.latest.num_versions}"
        )
    if which == "specific":
        if not policy.specific.versions:
            yield "version_policy specific: list at least one version"
        bad = [v for v in policy.specific.versions if v < 1]
        if bad:
            yield f"version_policy specific: versions must be positive, got {bad}"


def _dynamic_batching_problems(config: ModelConfig) -> Iterator[str]:
    db = config.dynamic_batching
    mbs = config.max_batch_size
    if mbs == 0:
        # Triton accepts this and never batches; an explicit batcher that cannot batch is a
        # config mistake worth reporting (set max_batch_size, or drop dynamic_batching).
        yield "dynamic_batching needs max_batch_size > 0 (the model cannot batch with 0)"
    for size in db.preferred_batch_size:
        if not 1 <= size <= mbs:
            yield (
                f"dynamic_batching preferred_batch_size {size} must be in 1..max_batch_size ({mbs})"
            )
    levels = db.priority_levels
    if levels > 0:
        if not 1 <= db.default_priority_level <= levels:
            yield (
                f"dynamic_batching default_priority_level {db.default_priority_level} must be "
                f"in 1..priority_levels ({levels})"
            )
        for level in sorted(db.priority_queue_policy):
            if not 1 <= level <= levels:
                yield (
                    f"dynamic_batching priority_queue_policy key {level} must be in "
                    f"1..priority_levels ({levels})"
                )
    elif db.default_priority_level or db.priority_queue_policy:
        yield "dynamic_batching priority settings need priority_levels > 0"
    if db.preserve_ordering and levels > 1:
        yield "dynamic_batching preserve_ordering allows only one priority level"


def _instance_group_problems(config: ModelConfig) -> Iterator[str]:
    if config.platform == "ensemble":
        if config.instance_group:
            yield "an ensemble cannot have instance_group (scale its composing models instead)"
        if not config.ensemble_scheduling.step:
            yield "an ensemble needs ensemble_scheduling with at least one step"
        return
    if config.HasField("ensemble_scheduling"):
        yield f"ensemble_scheduling needs platform: \"ensemble\", not '{config.platform}'"
    if not config.instance_group:
        yield "must specify at least one instance_group"
    for group in config.instance_group:
        label = f"instance_group '{group.name}'"
        if group.count < 1:
            yield f"{label}: count must be >= 1, got {group.count}"
        if group.kind == ModelInstanceGroup.KIND_CPU and group.gpus:
            yield f"{label} has kind KIND_CPU but lists gpus {list(group.gpus)}"

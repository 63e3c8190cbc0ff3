"""The non-inference answers of KServe v2 / Triton, once for every transport.

Health, metadata, config, statistics, repository index and model control are computed here as
Triton's protobuf messages (the protocol's own schema); the gRPC service returns them as they are,
the HTTP app renders them as JSON (:func:`pysonic.protocol.http_codec.message_to_json`), so both
protocols always give the same answer.

Example::

    meta = model_metadata(core, "dense_tagger")          # ModelMetadataResponse
    stats = model_statistics(core, "dense_tagger", "1")  # ModelStatisticsResponse
"""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import service_pb2

from pysonic._version import __version__
from pysonic.errors import InvalidArgumentError, PysonicError, UnimplementedError
from pysonic.repository.config import parse_model_config_json
from pysonic.server.core import InferenceCore
from pysonic.server.state import ServerState

__all__ = [
    "EXTENSIONS",
    "load_model",
    "model_config",
    "model_metadata",
    "model_ready",
    "model_statistics",
    "repository_index",
    "server_metadata",
    "server_ready",
    "unload_model",
]

#: Triton protocol extensions this server really implements (ServerMetadata.extensions).
EXTENSIONS = [
    "model_repository",
    "schedule_policy",
    "model_configuration",
    "statistics",
    "binary_tensor_data",
    "system_shared_memory",
]


def server_ready(core: InferenceCore, state: ServerState) -> bool:
    return state.ready and core.ready


def server_metadata() -> service_pb2.ServerMetadataResponse:
    return service_pb2.ServerMetadataResponse(
        name="pysonic", version=__version__, extensions=EXTENSIONS
    )


def model_ready(core: InferenceCore, state: ServerState, name: str, version: str = "") -> bool:
    try:
        core.get_version(name, version)
    except PysonicError:
        return False
    return state.ready


def model_metadata(
    core: InferenceCore, name: str, version: str = ""
) -> service_pb2.ModelMetadataResponse:
    mv = core.get_version(name, version)
    record = core.models[mv.name]
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


def model_config(
    core: InferenceCore, name: str, version: str = ""
) -> service_pb2.ModelConfigResponse:
    return service_pb2.ModelConfigResponse(config=core.get_version(name, version).config)


def model_statistics(
    core: InferenceCore, name: str = "", version: str = ""
) -> service_pb2.ModelStatisticsResponse:
    """One model version, every version of one model, or every loaded model (``name=""``)."""
    msg = service_pb2.ModelStatisticsResponse()
    if name:
        if version:
            versions = [core.get_version(name, version)]
        else:
            core.get_version(name)  # NotFound / Unavailable if not loaded
            versions = list(core.models[name].versions.values())
    else:
        versions = [v for r in core.models.values() for v in r.versions.values()]
    msg.model_stats.extend(v.stats.to_proto() for v in versions)
    return msg


def repository_index(
    core: InferenceCore, ready_only: bool = False
) -> service_pb2.RepositoryIndexResponse:
    msg = service_pb2.RepositoryIndexResponse()
    names = sorted(set(core.repository.model_names()) | set(core.models))
    for name in names:
        record = core.models.get(name)
        if record is not None and record.versions:
            for v in sorted(record.versions):
                msg.models.add(name=name, version=str(v), state=record.state)
        elif not ready_only:
            state = record.state if record is not None else "UNAVAILABLE"
            reason = record.reason if record is not None else "not loaded"
            msg.models.add(name=name, state=state, reason=reason)
    return msg


async def load_model(
    core: InferenceCore, state: ServerState, name: str, parameters: dict[str, Any]
) -> None:
    """RepositoryModelLoad: allowed in explicit model-control mode only (as Triton).

    A ``config`` parameter (Triton's JSON model config) replaces config.pbtxt for this load;
    ``file:`` parameters (model files sent in the request) are not supported."""
    state.check_model_control("load")
    if any(k.startswith("file:") for k in parameters):
        raise UnimplementedError(
            "loading with 'file:' parameters (model files sent in the request) is not "
            "supported; put the files in the model repository and load by name"
        )
    config = None
    if "config" in parameters:
        text = parameters["config"]
        if not isinstance(text, str):
            raise InvalidArgumentError("load parameter 'config' must be a JSON string")
        config = parse_model_config_json(text, f"load of model '{name}': config parameter")
    await core.load(name, config=config)


async def unload_model(core: InferenceCore, state: ServerState, name: str) -> None:
    state.check_model_control("unload")
    await core.unload(name)

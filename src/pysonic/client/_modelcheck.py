"""Refuse to run against a server whose model differs from the one the job was written for.

SonicTriton lets a module name a local ``config.pbtxt``; the client compares it with the server's
``ModelConfig`` before the first call. pysonic compares the model's signature (max_batch_size and
every input/output: name, datatype, dims, reshape) and names each difference, with a checksum of
each side's signature for the log.

Example::

    check_model_config(Path("particlenet/config.pbtxt"), server_config, "particlenet")
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from pysonic.errors import FailedPreconditionError
from pysonic.repository import parse_model_config

__all__ = ["check_model_config", "signature"]


def signature(config: model_config_pb2.ModelConfig) -> list[str]:
    """The lines that must agree between client and server (order-insensitive per tensor)."""
    lines = [f"max_batch_size {config.max_batch_size}"]
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for t in sorted(tensors, key=lambda t: t.name):
            dtype = model_config_pb2.DataType.Name(t.data_type)
            reshape = f" reshape {list(t.reshape.shape)}" if t.HasField("reshape") else ""
            lines.append(f"{kind} '{t.name}' {dtype} dims {list(t.dims)}{reshape}")
    return lines


def _checksum(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def check_model_config(path: Path, server: model_config_pb2.ModelConfig, model: str) -> None:
    """Raise FailedPreconditionError listing every difference, if there is one."""
    local = parse_model_config(Path(path).read_text(), str(path))
    ours, theirs = signature(local), signature(server)
    if ours == theirs:
        return
    only_ours = [line for line in ours if line not in theirs]
    only_theirs = [line for line in theirs if line not in ours]
    details = "; ".join(
        [f"local has {line}" for line in only_ours] + [f"server has {line}" for line in only_theirs]
    )
    msg = (
        f"model '{model}': local config {path} (signature {_checksum(ours)}) does not match the "
        f"server's (signature {_checksum(theirs)}): {details}"
    )
    raise FailedPreconditionError(msg)

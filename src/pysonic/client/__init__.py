"""The SONIC client: sync / async / pseudo-async inference over Triton's gRPC protocol.

Example::

    from pysonic.client import GrpcTransport, SonicClient, SonicConfig

    with SonicClient(SonicConfig("dense_tagger"), GrpcTransport("127.0.0.1:8001")) as client:
        outputs = client.infer({"pf_features": feats, "pf_mask": mask})
"""

from __future__ import annotations

from pysonic.client._client import AsyncSonicClient, CallTiming, Mode, SonicClient, SonicConfig
from pysonic.client._modelcheck import check_model_config
from pysonic.client._module import SonicModule
from pysonic.client._transport import AsyncTransport, GrpcTransport, ModelIndexEntry, TLSConfig

__all__ = [
    "AsyncSonicClient",
    "AsyncTransport",
    "CallTiming",
    "GrpcTransport",
    "Mode",
    "ModelIndexEntry",
    "SonicClient",
    "SonicConfig",
    "SonicModule",
    "TLSConfig",
    "check_model_config",
]

"""The SONIC client: sync / async / pseudo-async inference over Triton's gRPC protocol, with
server discovery, per-request balancing, retries and a local fallback.

Example::

    from pysonic.client import SonicConfig, connect

    with connect(SonicConfig("dense_tagger", allowed_tries=3)) as client:  # site from env
        outputs = client.infer({"pf_features": feats, "pf_mask": mask})
"""

from __future__ import annotations

from pysonic.client._balancer import Balanced, ServerStatus
from pysonic.client._client import AsyncSonicClient, CallTiming, Mode, SonicClient, SonicConfig
from pysonic.client._connect import build_transport, connect
from pysonic.client._fallback import LocalFallback
from pysonic.client._metrics import ClientMetrics
from pysonic.client._modelcheck import check_model_config
from pysonic.client._module import SonicModule
from pysonic.client._retry import Retrying, RetryPolicy
from pysonic.client._site import ServerEntry, SiteConfig
from pysonic.client._transport import AsyncTransport, GrpcTransport, ModelIndexEntry, TLSConfig

__all__ = [
    "AsyncSonicClient",
    "AsyncTransport",
    "Balanced",
    "CallTiming",
    "ClientMetrics",
    "GrpcTransport",
    "LocalFallback",
    "Mode",
    "ModelIndexEntry",
    "RetryPolicy",
    "Retrying",
    "ServerEntry",
    "ServerStatus",
    "SiteConfig",
    "SonicClient",
    "SonicConfig",
    "SonicModule",
    "TLSConfig",
    "build_transport",
    "check_model_config",
    "connect",
]

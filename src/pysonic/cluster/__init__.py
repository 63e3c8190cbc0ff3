"""A local multi-server cluster behind HAProxy (``pysonic cluster``), see docs/cluster.md.

Example::

    with LocalCluster(Path("model_repository"), servers=3, models=["particlenet_lite"]) as c:
        client = connect(SonicConfig("particlenet_lite"), c.site())
"""

from __future__ import annotations

from pysonic.cluster._cluster import LocalCluster, haproxy_binary
from pysonic.cluster._haproxy import Backend, HAProxySettings, backend_stats, render_config
from pysonic.cluster._state import (
    ClusterError,
    ClusterState,
    ServerRecord,
    cluster_status,
    load_state,
    site_toml,
    stop_cluster,
)

__all__ = [
    "Backend",
    "ClusterError",
    "ClusterState",
    "HAProxySettings",
    "LocalCluster",
    "ServerRecord",
    "backend_stats",
    "cluster_status",
    "haproxy_binary",
    "load_state",
    "render_config",
    "site_toml",
    "stop_cluster",
]

"""Prometheus scrape configuration for a local cluster: every server's /metrics and HAProxy's."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pysonic.cluster._cluster import ClusterState

__all__ = ["render_prometheus_config"]


def render_prometheus_config(state: ClusterState, scrape_interval_s: float = 5.0) -> str:
    """YAML text (kept by hand: two small jobs, no YAML dependency)."""
    servers = [
        f'"{state.host}:{s.metrics_port}"' for s in state.servers if s.metrics_port is not None
    ]
    return (
        "global:\n"
        f"  scrape_interval: {scrape_interval_s:g}s\n"
        f"  evaluation_interval: {scrape_interval_s:g}s\n"
        "scrape_configs:\n"
        "  - job_name: pysonic\n"
        "    static_configs:\n"
        f"      - targets: [{', '.join(servers)}]\n"
        "  - job_name: haproxy\n"
        "    static_configs:\n"
        f'      - targets: ["{state.host}:{state.stats_port}"]\n'
    )

"""HAProxy as the cluster's L7 load balancer: its configuration and its runtime statistics.

gRPC is HTTP/2 without TLS (h2c) on both sides (``proto h2`` on the bind and server lines), so
HAProxy balances per request (per HTTP/2 stream), not per connection. ``balance leastconn`` sends
each new request to the server with the fewest requests in flight, which is also how a saturated
server (a long queue keeps its requests in flight) gets fewer new ones. Health checks ask each
server's HTTP port for ``/v2/health/ready`` (a draining server answers 503 and leaves at once).
A request that could not be delivered or got no answer (connection refused or reset, empty
response, server timeout) is retried on another server (``retry-on`` + ``option redispatch``):
inference is idempotent, so a SIGKILLed server costs its clients nothing but latency.

Example::

    text = render_config(HAProxySettings(port=8001, stats_port=8404),
                         [Backend("s0", grpc_port=9001, http_port=9002)])
"""

from __future__ import annotations

import csv
import io
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Backend", "HAProxySettings", "backend_stats", "render_config"]


@dataclass(frozen=True)
class Backend:
    """One pysonic server as HAProxy sees it."""

    name: str
    grpc_port: int
    http_port: int
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class HAProxySettings:
    """The knobs worth changing; the rest is fixed policy (see the module doc)."""

    port: int
    stats_port: int
    host: str = "127.0.0.1"
    check_interval_ms: int = 500
    retries: int = 3
    #: per-try server timeout: a request unanswered this long is retried elsewhere
    server_timeout_s: float = 60.0
    #: L7 retries need the whole request in one buffer: requests up to ~16 KB (ParticleNet's
    #: ~10 KB) are retried by HAProxy, larger ones are streamed through without that retry (the
    #: client's own retries still apply). 256 KB buffers tripled HAProxy's CPU per request here.
    bufsize: int = 16384
    maxconn: int = 4096


def render_config(settings: HAProxySettings, backends: Sequence[Backend]) -> str:
    """The haproxy.cfg text for ``backends`` behind one h2c frontend."""
    s = settings
    lines = [
        "global",
        f"    maxconn {s.maxconn}",
        f"    tune.bufsize {s.bufsize}",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 10m",
        f"    timeout server {int(s.server_timeout_s * 1000)}ms",
        "    timeout check 1s",
        f"    retries {s.retries}",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout",
        "",
        "frontend grpc",
        f"    bind {s.host}:{s.port} proto h2",
        "    default_backend pysonic",
        "",
        "frontend stats",
        f"    bind {s.host}:{s.stats_port}",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 5s",
        "",
        "backend pysonic",
        "    balance leastconn",
        "    option httpchk GET /v2/health/ready",
        "    http-check expect status 200",
        f"    default-server inter {s.check_interval_ms}ms fastinter {s.check_interval_ms}ms"
        " downinter 1s fall 2 rise 2",
    ]
    lines.extend(
        f"    server {b.name} {b.host}:{b.grpc_port} proto h2 check port {b.http_port}"
        " check-proto h1"
        for b in backends
    )
    return "\n".join(lines) + "\n"


def backend_stats(stats_url: str, timeout: float = 2.0) -> list[dict[str, str]]:
    """HAProxy's CSV statistics for the ``pysonic`` backend's servers (status, scur, stot, ...)."""
    with urllib.request.urlopen(f"{stats_url.rstrip('/')}/stats;csv", timeout=timeout) as r:
        text = r.read().decode()
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return [row for row in rows if row["pxname"] == "pysonic" and row["svname"] not in ("BACKEND",)]

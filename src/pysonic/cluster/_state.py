"""A local cluster's state on disk (``state.json``) and what reads it: status and shutdown.

``pysonic cluster up`` exits while what it started runs on; ``status`` and ``down`` find the
processes again through this file (pids, ports, logs).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pysonic.cluster._haproxy import backend_stats

__all__ = [
    "STATE_FILE",
    "ClusterError",
    "ClusterState",
    "ServerRecord",
    "cluster_status",
    "load_state",
    "pid_alive",
    "site_toml",
    "stop_cluster",
    "stop_pid",
]

STATE_FILE = "state.json"


class ClusterError(RuntimeError):
    """The cluster could not be started, or its state is missing."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child (ours, not yet reaped) is dead for our purpose
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class ServerRecord:
    name: str
    pid: int
    grpc_port: int
    http_port: int
    metrics_port: int | None
    log: str


@dataclass
class ClusterState:
    """What ``up`` started (written to ``state.json``)."""

    servers: list[ServerRecord]
    haproxy_pid: int
    port: int
    stats_port: int
    host: str = "127.0.0.1"
    prometheus_pid: int | None = None
    prometheus_port: int | None = None
    models: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def stats_url(self) -> str:
        return f"http://{self.host}:{self.stats_port}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterState:
        data = json.loads(text)
        data["servers"] = [ServerRecord(**s) for s in data["servers"]]
        return cls(**data)


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; reaps our own children."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def site_toml(state: ClusterState) -> str:
    """The site file clients use: one entry, the cluster's load balancer."""
    return (
        "# pysonic local cluster: the load balancer is the site's only entry\n"
        "saturation_queue_ms = 100\n\n"
        "[[servers]]\n"
        'name = "pysonic-cluster"\n'
        f'address = "{state.host}"\n'
        f"port = {state.port}\n"
    )


def load_state(state_dir: Path) -> ClusterState:
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        msg = f"no cluster state in {state_dir} (pysonic cluster up first)"
        raise ClusterError(msg)
    return ClusterState.from_json(path.read_text())


def stop_cluster(state: ClusterState) -> None:
    """Stop Prometheus, HAProxy, then the servers (SIGTERM: each drains), by their pids."""
    if state.prometheus_pid:
        stop_pid(state.prometheus_pid)
    stop_pid(state.haproxy_pid)
    for s in state.servers:
        if pid_alive(s.pid):
            os.kill(s.pid, signal.SIGTERM)
    for s in state.servers:
        stop_pid(s.pid, timeout=40.0)


def cluster_status(state: ClusterState) -> dict[str, Any]:
    """Liveness of every process and HAProxy's view of each server."""
    try:
        rows = {r["svname"]: r for r in backend_stats(state.stats_url)}
    except (OSError, urllib.error.URLError):
        rows = {}
    servers = []
    for s in state.servers:
        row = rows.get(s.name, {})
        servers.append(
            {
                "name": s.name,
                "pid": s.pid,
                "alive": pid_alive(s.pid),
                "grpc": f"{state.host}:{s.grpc_port}",
                "http": f"{state.host}:{s.http_port}",
                "metrics": f"{state.host}:{s.metrics_port}" if s.metrics_port else None,
                "lb_status": row.get("status", "?"),
                "in_flight": int(row.get("scur") or 0),
                "requests": int(row.get("stot") or 0),
            }
        )
    return {
        "url": state.url,
        "haproxy": {"pid": state.haproxy_pid, "alive": pid_alive(state.haproxy_pid)},
        "stats": f"{state.stats_url}/stats",
        "prometheus": (
            {
                "pid": state.prometheus_pid,
                "alive": pid_alive(state.prometheus_pid),
                "url": f"http://{state.host}:{state.prometheus_port}",
            }
            if state.prometheus_pid
            else None
        ),
        "servers": servers,
    }

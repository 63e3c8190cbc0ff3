"""A local cluster: N ``pysonic serve`` processes behind HAProxy, scraped by Prometheus.

Everything runs on existing engines: the servers are ordinary ``pysonic serve`` processes, the load
balancer is HAProxy (Debian package ``haproxy``), monitoring is Prometheus (``prometheus``, used
when installed). pysonic only writes their configurations, starts them in their own sessions (so
they outlive ``pysonic cluster up``) and records their pids and ports in ``state.json`` under the
state directory, which ``status`` and ``down`` read. Clients reach the cluster through the site
configuration ``site.toml`` written there, exactly like a remote site's load balancer.

Example::

    with LocalCluster(Path("model_repository"), servers=3, models=["identity_fp32"]) as cluster:
        client = connect(SonicConfig("identity_fp32"), cluster.site())
        ...
        cluster.kill_server(0)              # SIGKILL: HAProxy retries elsewhere

    pysonic cluster up --servers 3 --state-dir .pysonic-cluster   # same, from the shell
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pysonic.client._site import ServerEntry, SiteConfig
from pysonic.cluster._haproxy import Backend, HAProxySettings, backend_stats, render_config
from pysonic.cluster._prometheus import render_prometheus_config
from pysonic.server.process import ServerProcess

__all__ = ["ClusterError", "ClusterState", "LocalCluster", "ServerRecord", "haproxy_binary"]

STATE_FILE = "state.json"


class ClusterError(RuntimeError):
    """The cluster could not be started, or its state is missing."""


def haproxy_binary() -> str | None:
    return shutil.which("haproxy")


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)  # polling with a deadline
    msg = f"timed out after {timeout:.0f} s waiting for {what}"
    raise ClusterError(msg)


def _stop_pid(pid: int, timeout: float = 15.0) -> None:
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


class LocalCluster:
    """Start, inspect and stop a local cluster (see the module doc)."""

    def __init__(
        self,
        repository: Path,
        *,
        servers: int = 3,
        models: Sequence[str] = (),
        state_dir: Path | None = None,
        port: int = 0,
        prometheus: bool | None = None,
        server_args: Sequence[str] = (),
        haproxy: HAProxySettings | None = None,
        start_timeout: float = 120.0,
        scrape_interval_s: float = 5.0,
    ) -> None:
        if servers < 1:
            msg = "a cluster needs at least one server"
            raise ClusterError(msg)
        self.repository = Path(repository).resolve()
        self.n_servers = servers
        self.models = list(models)
        self.state_dir = Path(state_dir) if state_dir else None
        self._tmp: Any = None
        self.port = port
        self.prometheus = prometheus
        self.server_args = list(server_args)
        self.haproxy_settings = haproxy
        self.start_timeout = start_timeout
        self.scrape_interval_s = scrape_interval_s
        self.state: ClusterState | None = None
        #: this process's handles on what it started (reaped and closed by ``down``)
        self._servers: list[ServerProcess] = []
        self._popens: list[subprocess.Popen[bytes]] = []

    # ------------------------------------------------------------------ up
    def up(self) -> ClusterState:
        """Start the servers, HAProxy and (optionally) Prometheus; write the state and site."""
        binary = haproxy_binary()
        if binary is None:
            msg = "haproxy is not installed (apt-get install -y haproxy)"
            raise ClusterError(msg)
        if self.state_dir is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="pysonic-cluster-")
            self.state_dir = Path(self._tmp.name)
        state_dir = self.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        if (state_dir / STATE_FILE).exists():
            old = load_state(state_dir)
            if any(pid_alive(s.pid) for s in old.servers) or pid_alive(old.haproxy_pid):
                msg = f"a cluster already runs from {state_dir} (pysonic cluster down first)"
                raise ClusterError(msg)
        records: list[ServerRecord] = []
        started: list[int] = []
        try:
            records = self._start_servers(state_dir, started)
            state = self._start_haproxy(binary, state_dir, records, started)
            if self.prometheus is not False and prometheus_binary() is not None:
                self._start_prometheus(state, state_dir, started)
            elif self.prometheus:
                msg = "prometheus is not installed (apt-get install -y prometheus)"
                raise ClusterError(msg)
        except BaseException:
            for pid in reversed(started):
                _stop_pid(pid, timeout=5.0)
            self._release()
            raise
        (state_dir / STATE_FILE).write_text(state.to_json())
        (state_dir / "site.toml").write_text(site_toml(state))
        self.state = state
        return state

    def _start_servers(self, state_dir: Path, started: list[int]) -> list[ServerRecord]:
        procs = []
        for i in range(self.n_servers):
            proc = ServerProcess(
                self.repository,
                models=self.models,
                extra_args=["--http-port", "0", *self.server_args],
                start_timeout=self.start_timeout,
                log_path=state_dir / f"server-{i}.log",
                detach=True,
            )
            procs.append(proc)
        self._servers = procs
        for proc in procs:
            proc.start()
            assert proc.pid is not None
            started.append(proc.pid)
        return [
            ServerRecord(
                name=f"s{i}",
                pid=int(p.pid or 0),
                grpc_port=int(p.grpc_port or 0),
                http_port=int(p.http_port or 0),
                metrics_port=p.metrics_port,
                log=str(p.log_path),
            )
            for i, p in enumerate(procs)
        ]

    def _start_haproxy(
        self, binary: str, state_dir: Path, records: list[ServerRecord], started: list[int]
    ) -> ClusterState:
        port = self.port or free_port()
        settings = self.haproxy_settings or HAProxySettings(port=port, stats_port=free_port())
        settings = HAProxySettings(**{**asdict(settings), "port": port})
        backends = [Backend(r.name, r.grpc_port, r.http_port) for r in records]
        cfg = state_dir / "haproxy.cfg"
        cfg.write_text(render_config(settings, backends))
        check = subprocess.run(
            [binary, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            msg = f"haproxy rejected {cfg}: {check.stderr.strip()}"
            raise ClusterError(msg)
        with (state_dir / "haproxy.log").open("w") as log:
            proc = subprocess.Popen(
                [binary, "-db", "-f", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc.pid)
        self._popens.append(proc)
        state = ClusterState(
            servers=records,
            haproxy_pid=proc.pid,
            port=port,
            stats_port=settings.stats_port,
            host=settings.host,
            models=self.models,
        )

        def all_up() -> bool:
            if proc.poll() is not None:
                text = (state_dir / "haproxy.log").read_text()
                msg = f"haproxy exited ({proc.returncode}): {text[-2000:]}"
                raise ClusterError(msg)
            try:
                rows = backend_stats(state.stats_url, timeout=1.0)
            except (OSError, urllib.error.URLError):
                return False
            return len(rows) == len(records) and all(r["status"] == "UP" for r in rows)

        _wait(all_up, 30.0, "HAProxy to see every server UP")
        return state

    def _start_prometheus(self, state: ClusterState, state_dir: Path, started: list[int]) -> None:
        binary = prometheus_binary()
        assert binary is not None
        port = free_port()
        cfg = state_dir / "prometheus.yml"
        cfg.write_text(render_prometheus_config(state, self.scrape_interval_s))
        with (state_dir / "prometheus.log").open("w") as log:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={state_dir / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc.pid)
        self._popens.append(proc)
        state.prometheus_pid, state.prometheus_port = proc.pid, port

        def ready() -> bool:
            if proc.poll() is not None:
                msg = f"prometheus exited: {(state_dir / 'prometheus.log').read_text()[-2000:]}"
                raise ClusterError(msg)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
                    return bool(r.status == 200)
            except (OSError, urllib.error.URLError):
                return False

        _wait(ready, 30.0, "Prometheus to be ready")

    # ------------------------------------------------------------------ use
    def site(self, **options: Any) -> SiteConfig:
        """The site configuration that reaches this cluster (its load balancer)."""
        state = self._require()
        lb = ServerEntry(address=state.host, port=state.port, name="pysonic-cluster")
        return SiteConfig(servers=(lb,), **options)

    def kill_server(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to server ``index`` (default SIGKILL, a crash) and reap it."""
        pid = self._require().servers[index].pid
        os.kill(pid, sig)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def _require(self) -> ClusterState:
        if self.state is None:
            msg = "the cluster is not up"
            raise ClusterError(msg)
        return self.state

    def down(self) -> None:
        if self.state is not None:
            stop_cluster(self.state)
            if self.state_dir is not None:
                (self.state_dir / STATE_FILE).unlink(missing_ok=True)
            self.state = None
        self._release()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _release(self) -> None:
        """Reap the (already stopped) processes and close their logs."""
        for server in self._servers:
            server.stop(timeout=5.0)
            server._log.close()
        for proc in self._popens:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._servers, self._popens = [], []

    def __enter__(self) -> LocalCluster:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()


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
        _stop_pid(state.prometheus_pid)
    _stop_pid(state.haproxy_pid)
    for s in state.servers:
        if pid_alive(s.pid):
            os.kill(s.pid, signal.SIGTERM)
    for s in state.servers:
        _stop_pid(s.pid, timeout=40.0)


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

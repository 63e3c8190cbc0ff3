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
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any

from pysonic.client._site import ServerEntry, SiteConfig
from pysonic.cluster._haproxy import Backend, HAProxySettings, backend_stats, render_config
from pysonic.cluster._prometheus import render_prometheus_config
from pysonic.cluster._state import (
    STATE_FILE,
    ClusterError,
    ClusterState,
    ServerRecord,
    load_state,
    pid_alive,
    site_toml,
    stop_cluster,
    stop_pid,
)
from pysonic.server.process import ServerProcess

__all__ = ["LocalCluster", "free_port", "haproxy_binary", "prometheus_binary"]


def haproxy_binary() -> str | None:
    # Debian installs it in /usr/sbin, outside an unprivileged user's PATH
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)  # polling with a deadline
    msg = f"timed out after {timeout:.0f} s waiting for {what}"
    raise ClusterError(msg)


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
                stop_pid(pid, timeout=5.0)
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

"""Site configuration: which servers a job may use, and how the client treats them.

A site describes its servers in a TOML file (as SuperSONIC sites describe their endpoints); the
environment overrides it, so a batch system can point jobs elsewhere without editing files:

* ``PYSONIC_SITE_CONFIG``: path of the TOML file;
* ``PYSONIC_SERVERS``: ``host:port,host:port`` replaces the server list;
* ``SONIC_LOCAL_BALANCER_HOST`` / ``SONIC_LOCAL_BALANCER_PORT`` (CMSSW SonicTriton's): one entry,
  the site's load balancer, replaces the list.

Example file::

    allow_local_fallback = true
    fallback_model_repository = "/cvmfs/cms.cern.ch/sonic/model_repository"
    saturation_queue_ms = 100

    [[servers]]
    name = "gpu-1"
    address = "gpu-1.example.org"
    port = 8001
    token = "..."          # optional bearer token
    tls = { ca_file = "/etc/grid-security/ca.pem" }   # optional

Example::

    site = SiteConfig.from_env()
    [s.url for s in site.servers]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pysonic.client._transport import TLSConfig
from pysonic.errors import InvalidArgumentError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ServerEntry", "SiteConfig"]


@dataclass(frozen=True)
class ServerEntry:
    """One server (or load balancer) the site offers."""

    address: str
    port: int = 8001
    name: str = ""
    tls: TLSConfig | None = None
    token: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> ServerEntry:
        """``host:port`` (``[v6]:port``) as given in PYSONIC_SERVERS."""
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            msg = f"server '{text}' is not host:port"
            raise InvalidArgumentError(msg)
        return cls(address=host.strip("[]"), port=int(port), name=text.strip())


@dataclass(frozen=True)
class SiteConfig:
    """Servers plus the client's policies at this site."""

    servers: tuple[ServerEntry, ...] = ()
    allow_local_fallback: bool = False
    fallback_model_repository: Path | None = None
    saturation_queue_ms: float = 100.0
    probe_interval_s: float = 10.0
    eject_base_s: float = 1.0
    eject_max_s: float = 30.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<site>") -> SiteConfig:
        servers = []
        for i, s in enumerate(data.get("servers", [])):
            if "address" not in s:
                msg = f"{source}: servers[{i}] has no address"
                raise InvalidArgumentError(msg)
            tls = TLSConfig(**s["tls"]) if isinstance(s.get("tls"), Mapping) else None
            servers.append(
                ServerEntry(
                    address=str(s["address"]),
                    port=int(s.get("port", 8001)),
                    name=str(s.get("name", "")),
                    tls=tls,
                    token=s.get("token"),
                )
            )
        known = {f for f in cls.__dataclass_fields__ if f not in ("servers", "extra")}
        options = {k: v for k, v in data.items() if k in known}
        if options.get("fallback_model_repository") is not None:
            options["fallback_model_repository"] = Path(options["fallback_model_repository"])
        extra = {k: v for k, v in data.items() if k not in known and k != "servers"}
        return cls(servers=tuple(servers), extra=extra, **options)

    @classmethod
    def load(cls, path: Path | str) -> SiteConfig:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            msg = f"cannot read site configuration {path}: {err}"
            raise InvalidArgumentError(msg) from err
        return cls.from_mapping(data, str(path))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SiteConfig:
        """The site file named by PYSONIC_SITE_CONFIG (if any), then the server overrides."""
        env = os.environ if environ is None else environ
        site = cls.load(env["PYSONIC_SITE_CONFIG"]) if env.get("PYSONIC_SITE_CONFIG") else cls()
        if env.get("PYSONIC_SERVERS"):
            entries = [ServerEntry.parse(t) for t in env["PYSONIC_SERVERS"].split(",") if t.strip()]
            site = replace(site, servers=tuple(entries))
        if env.get("SONIC_LOCAL_BALANCER_HOST"):
            port = int(env.get("SONIC_LOCAL_BALANCER_PORT", "8001"))
            lb = ServerEntry(address=env["SONIC_LOCAL_BALANCER_HOST"], port=port, name="balancer")
            site = replace(site, servers=(lb,))
        return site

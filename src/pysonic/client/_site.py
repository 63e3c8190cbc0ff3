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
    token_file = "/run/secrets/sonic-token"   # optional bearer token (or token = "...")
    tls = { ca_file = "/etc/grid-security/ca.pem" }   # optional (cert_file, key_file, server_name)

Top-level ``token_file`` / ``token`` and ``tls`` apply to every server that sets none of its own,
including the servers named by the environment; ``PYSONIC_TOKEN_FILE`` names a token file for
them too (a token never needs to be in the environment or on a command line).

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
    #: bearer token sent as ``authorization: Bearer ...`` (never shown in ``repr``)
    token: str | None = field(default=None, repr=False)

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
    #: defaults for servers that set none of their own (the environment's servers too)
    tls: TLSConfig | None = None
    token: str | None = field(default=None, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<site>") -> SiteConfig:
        servers = []
        for i, s in enumerate(data.get("servers", [])):
            if "address" not in s:
                msg = f"{source}: servers[{i}] has no address"
                raise InvalidArgumentError(msg)
            servers.append(
                ServerEntry(
                    address=str(s["address"]),
                    port=int(s.get("port", 8001)),
                    name=str(s.get("name", "")),
                    tls=_tls(s.get("tls"), f"{source}: servers[{i}].tls"),
                    token=_token(s, f"{source}: servers[{i}]"),
                )
            )
        special = ("servers", "extra", "tls", "token")
        known = {f for f in cls.__dataclass_fields__ if f not in special}
        options = {k: v for k, v in data.items() if k in known}
        options["tls"] = _tls(data.get("tls"), f"{source}: tls")
        options["token"] = _token(data, source)
        if options.get("fallback_model_repository") is not None:
            options["fallback_model_repository"] = Path(options["fallback_model_repository"])
        extra = {
            k: v for k, v in data.items() if k not in known and k not in (*special, "token_file")
        }
        return cls(servers=tuple(servers), extra=extra, **options).with_defaults()

    def with_defaults(self) -> SiteConfig:
        """Servers without TLS or a token of their own take the site's."""
        if self.tls is None and self.token is None:
            return self
        servers = tuple(
            replace(s, tls=s.tls or self.tls, token=s.token or self.token) for s in self.servers
        )
        return replace(self, servers=servers)

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
        if env.get("PYSONIC_TOKEN_FILE"):
            token = _token({"token_file": env["PYSONIC_TOKEN_FILE"]}, "PYSONIC_TOKEN_FILE")
            site = replace(site, token=token)
        return site.with_defaults()


def _tls(value: Any, where: str) -> TLSConfig | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        msg = f"{where} must be a table (ca_file, cert_file, key_file, server_name)"
        raise InvalidArgumentError(msg)
    try:
        return TLSConfig(**value)
    except TypeError as err:
        msg = f"{where}: {err}"
        raise InvalidArgumentError(msg) from None


def _token(entry: Mapping[str, Any], where: str) -> str | None:
    """``token_file`` (the token alone in a file, surrounding whitespace dropped) or ``token``."""
    if entry.get("token_file"):
        path = Path(str(entry["token_file"])).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as err:
            msg = f"{where}: cannot read token_file {path}: {err.strerror}"
            raise InvalidArgumentError(msg) from None
        if not token:
            msg = f"{where}: token_file {path} is empty"
            raise InvalidArgumentError(msg)
        return token
    token = entry.get("token")
    return None if token is None else str(token)

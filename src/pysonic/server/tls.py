"""TLS for the server's listeners: one certificate for gRPC and HTTPS, optional mutual TLS.

With ``client_ca_file`` set, clients must present a certificate signed by that CA (mutual TLS)
on both protocols. The Prometheus endpoint stays plain HTTP (scraped inside the cluster).

Example::

    tls = ServerTLS(Path("server.pem"), Path("server.key"), client_ca_file=Path("ca.pem"))
    port = grpc_server.add_secure_port("0.0.0.0:8001", tls.grpc_credentials())
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from pysonic.errors import InvalidArgumentError

__all__ = ["ServerTLS"]


@dataclass(frozen=True)
class ServerTLS:
    """The server's certificate chain and key (PEM), and the CA that signs client certificates
    when mutual TLS is wanted."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def _read(self, path: Path, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as err:
            msg = f"cannot read the TLS {what} {path}: {err.strerror}"
            raise InvalidArgumentError(msg) from None

    def check(self) -> None:
        """Load the files once with Python's ssl module, so a bad file fails at startup with
        its name (grpc's own error would only say that the port could not be added)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
            if self.client_ca_file is not None:
                context.load_verify_locations(cafile=self.client_ca_file)
        except (OSError, ssl.SSLError) as err:
            msg = f"TLS certificate / key / client CA cannot be used: {err}"
            raise InvalidArgumentError(msg) from None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        key = self._read(self.key_file, "key")
        cert = self._read(self.cert_file, "certificate")
        ca = None if self.client_ca_file is None else self._read(self.client_ca_file, "client CA")
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )

    def uvicorn_options(self) -> dict[str, Any]:
        """``uvicorn.Config`` keyword arguments for HTTPS."""
        options: dict[str, Any] = {
            "ssl_certfile": str(self.cert_file),
            "ssl_keyfile": str(self.key_file),
        }
        if self.client_ca_file is not None:
            options["ssl_ca_certs"] = str(self.client_ca_file)
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        return options

"""TLS, mutual TLS, bearer tokens (static and JWT), per-model authorization and shared-memory
key restrictions, on both protocols, with tritonclient and pysonic's own client.

Certificates are made at test time with trustme; JWTs are signed with PyJWT (HS256 with a shared
secret, RS256 with a key pair made here). Every server is a real pysonic server on free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent.ssl
import grpc
import jwt
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tritonclient.utils import InferenceServerException

from conftest import ADD_SUB_CONFIG, DENSE_CONFIG, add_sub_model, dense_model, save_model
from pysonic.client import GrpcTransport, SiteConfig, SonicClient, SonicConfig, TLSConfig, connect
from pysonic.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from pysonic.protocol.types import InferRequest, InferTensor
from pysonic.server import EmbeddedServer, ServerOptions, ServerProcess, StartupError
from pysonic.server.auth import Action, AuthPolicy, Principal, Target, token_digest

INFER_TOKEN = "infer-token-7c1d0a"
ADMIN_TOKEN = "admin-token-55e2f9"
JWT_SECRET = "jwt-shared-secret-for-the-tests-0123456789abcdef0123456789abcdef"
AUDIENCE, ISSUER = "pysonic", "https://issuer.test"
X = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rsa_private: bytes
    rsa_public: Path
    other_private: bytes


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(d / "ca.pem")
    server = ca.issue_cert("pysonic.test", "127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(d / "server.key")
    server.cert_chain_pems[0].write_to_path(d / "server.pem")
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(d / "server.pem", append=True)
    client = ca.issue_cert("job-42@grid.test")
    client.private_key_pem.write_to_path(d / "client.key")
    client.cert_chain_pems[0].write_to_path(d / "client.pem")
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]
    pem = serialization.Encoding.PEM
    private = [
        k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        for k in keys
    ]
    public = keys[0].public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    (d / "jwt.pub").write_bytes(public)
    return Pki(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        rsa_private=private[0],
        rsa_public=d / "jwt.pub",
        other_private=private[1],
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    save_model(repo, "dense", dense_model(), DENSE_CONFIG)
    save_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    return repo


def write_policy(directory: Path, pki: Pki) -> Path:
    (directory / "jwt.secret").write_text(JWT_SECRET + "\n")
    policy = directory / "auth.yaml"
    policy.write_text(
        f"""
tokens:
  - subject: analyst
    sha256: {token_digest(INFER_TOKEN)}
    scopes: [infer]
  - subject: operator
    sha256: {token_digest(ADMIN_TOKEN)}
    scopes: [admin]
jwt:
  secret_file: {directory / "jwt.secret"}
  public_key_file: {pki.rsa_public}
  audience: {AUDIENCE}
  issuer: {ISSUER}
allow:
  - scopes: [infer]
    models: ["dens*"]
    actions: [infer, metadata]
  - subjects: [batch-job]
    models: [add_sub]
    actions: [infer]
  - scopes: [admin]
    models: ["*"]
    actions: [infer, metadata, load, unload, shared_memory]
"""
    )
    return policy


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Path:
    return write_policy(tmp_path_factory.mktemp("auth"), pki)


@pytest.fixture(scope="module")
def tls_server(repo: Path, pki: Pki) -> Iterator[EmbeddedServer]:
    """TLS (no client certificates asked), no authentication."""
    options = ServerOptions(
        model_repository=repo,
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=None,
        drain_timeout=5,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
    )
    with EmbeddedServer(options) as srv:
        yield srv


@pytest.fixture(scope="module")
def secure_server(repo: Path, pki: Pki, policy_file: Path) -> Iterator[EmbeddedServer]:
    """Mutual TLS + bearer tokens + a shared-memory key prefix; metrics stay plain and open."""
    options = ServerOptions(
        model_repository=repo,
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        drain_timeout=5,
        model_control_mode="explicit",
        load_models=["*"],
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca,
        auth_policy=policy_file,
        shared_memory_key_prefixes=["sonic_"],
    )
    with EmbeddedServer(options) as srv:
        yield srv


def make_jwt(key: Any, alg: str = "HS256", **claims: Any) -> str:
    body = {"sub": "batch-job", "aud": AUDIENCE, "iss": ISSUER, "exp": time.time() + 600}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def grpc_client(server: EmbeddedServer, pki: Pki, *, client_cert: bool = True) -> Any:
    kwargs: dict[str, Any] = {"ssl": True, "root_certificates": str(pki.ca)}
    if client_cert:
        kwargs.update(private_key=str(pki.client_key), certificate_chain=str(pki.client_cert))
    return grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}", **kwargs)


def http_client(server: EmbeddedServer, pki: Pki, *, client_cert: bool = True) -> Any:
    options: dict[str, Any] = {"ca_certs": str(pki.ca)}
    if client_cert:
        options.update(certfile=str(pki.client_cert), keyfile=str(pki.client_key))
    return httpclient.InferenceServerClient(
        f"127.0.0.1:{server.server.http_port}",
        ssl=True,
        ssl_options=options,
        ssl_context_factory=gevent.ssl.create_default_context,
        connection_timeout=10,
        network_timeout=10,
    )


def grpc_infer(client: Any, model: str = "dense", headers: dict | None = None) -> Any:
    if model == "dense":
        inp = grpcclient.InferInput("x", [2, 16], "FP32")
        inp.set_data_from_numpy(X)
        inputs = [inp]
    else:
        inputs = []
        for n in ("INPUT0", "INPUT1"):
            inp = grpcclient.InferInput(n, [2, 16], "FP32")
            inp.set_data_from_numpy(X)
            inputs.append(inp)
    return client.infer(model, inputs, headers=headers, client_timeout=10)


def http_infer(client: Any, model: str = "dense", headers: dict | None = None) -> Any:
    names = ["x"] if model == "dense" else ["INPUT0", "INPUT1"]
    inputs = []
    for n in names:
        inp = httpclient.InferInput(n, [2, 16], "FP32")
        inp.set_data_from_numpy(X, binary_data=True)
        inputs.append(inp)
    return client.infer(model, inputs, headers=headers)


def grpc_status(err: InferenceServerException) -> str:
    return str(err.status())


# ---------------------------------------------------------------------- TLS
def test_tls_grpc_with_tritonclient(tls_server: EmbeddedServer, pki: Pki) -> None:
    client = grpc_client(tls_server, pki, client_cert=False)
    out = grpc_infer(client).as_numpy("probs")
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    client.close()


def test_tls_https_with_tritonclient(tls_server: EmbeddedServer, pki: Pki) -> None:
    client = http_client(tls_server, pki, client_cert=False)
    assert client.is_server_ready()
    out = http_infer(client).as_numpy("probs")
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    client.close()


def test_tls_pysonic_client_and_server_name(tls_server: EmbeddedServer, pki: Pki) -> None:
    url = f"127.0.0.1:{tls_server.server.grpc_port}"
    request = InferRequest("dense", [InferTensor("x", "FP32", (2, 16), X)])

    async def run(tls: TLSConfig) -> Any:
        transport = GrpcTransport(url, tls=tls)
        try:
            return await transport.infer(request, timeout=10)
        finally:
            await transport.close()

    ca = str(pki.ca)
    response = asyncio.run(run(TLSConfig(ca_file=ca)))
    assert response.outputs[0].data.shape == (2, 4)
    # the certificate names pysonic.test too: override the name checked against it
    assert asyncio.run(run(TLSConfig(ca_file=ca, server_name="pysonic.test"))).outputs
    with pytest.raises(UnavailableError):  # a name the certificate does not carry
        asyncio.run(run(TLSConfig(ca_file=ca, server_name="elsewhere.test")))


def test_plaintext_clients_to_a_tls_server_fail_cleanly(
    tls_server: EmbeddedServer, pki: Pki
) -> None:
    start = time.monotonic()
    plain = grpcclient.InferenceServerClient(f"127.0.0.1:{tls_server.server.grpc_port}")
    with pytest.raises(InferenceServerException) as err:
        grpc_infer(plain)
    assert "UNAVAILABLE" in grpc_status(err.value)
    plain.close()
    request = InferRequest("dense", [InferTensor("x", "FP32", (2, 16), X)])

    async def pysonic_plain() -> None:
        transport = GrpcTransport(f"127.0.0.1:{tls_server.server.grpc_port}")
        try:
            await transport.infer(request, timeout=5)
        finally:
            await transport.close()

    with pytest.raises(UnavailableError):
        asyncio.run(pysonic_plain())
    http_plain = httpclient.InferenceServerClient(
        f"127.0.0.1:{tls_server.server.http_port}", connection_timeout=5, network_timeout=5
    )
    with pytest.raises(Exception) as http_err:  # noqa: PT011 - the connection is reset
        http_plain.is_server_live()
    assert not isinstance(http_err.value, AssertionError)
    http_plain.close()
    assert time.monotonic() - start < 15  # refused, not hung
    # the server is unharmed
    client = grpc_client(tls_server, pki, client_cert=False)
    assert client.is_server_ready()
    client.close()


def test_mutual_tls_requires_a_client_certificate(secure_server: EmbeddedServer, pki: Pki) -> None:
    anonymous = grpc_client(secure_server, pki, client_cert=False)
    with pytest.raises(InferenceServerException) as err:
        anonymous.is_server_live()
    assert "UNAVAILABLE" in grpc_status(err.value)
    anonymous.close()
    http_anonymous = http_client(secure_server, pki, client_cert=False)
    with pytest.raises(Exception):  # noqa: B017, PT011 - the TLS handshake is refused
        http_anonymous.is_server_live()
    http_anonymous.close()
    client = grpc_client(secure_server, pki)
    assert client.is_server_live()  # health stays open: no token needed
    client.close()


def test_startup_errors_name_the_bad_tls_file(repo: Path, pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate")
    options = ServerOptions(
        model_repository=repo,
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=None,
        tls_cert_file=tmp_path / "bad.pem",
        tls_key_file=pki.server_key,
    )
    with pytest.raises(StartupError, match="TLS"):
        EmbeddedServer(options).start()
    options.tls_cert_file = None
    with pytest.raises(StartupError, match="both a certificate and its key"):
        EmbeddedServer(options).start()


# ---------------------------------------------------------------------- authentication
def test_grpc_tokens_and_health(secure_server: EmbeddedServer, pki: Pki) -> None:
    client = grpc_client(secure_server, pki)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("dense")
    with pytest.raises(InferenceServerException) as err:
        grpc_infer(client)
    assert "UNAUTHENTICATED" in grpc_status(err.value)
    with pytest.raises(InferenceServerException) as err:
        grpc_infer(client, headers=bearer("not-a-known-token"))
    assert "UNAUTHENTICATED" in grpc_status(err.value)
    with pytest.raises(InferenceServerException) as err:
        client.get_server_metadata()
    assert "UNAUTHENTICATED" in grpc_status(err.value)
    out = grpc_infer(client, headers=bearer(INFER_TOKEN)).as_numpy("probs")
    assert out.shape == (2, 4)
    assert client.get_model_metadata("dense", headers=bearer(INFER_TOKEN)).name == "dense"
    with pytest.raises(InferenceServerException) as err:
        grpc_infer(client, "add_sub", headers=bearer(INFER_TOKEN))
    assert "PERMISSION_DENIED" in grpc_status(err.value)
    assert "add_sub" in err.value.message()
    with pytest.raises(InferenceServerException) as err:  # statistics of every model
        client.get_inference_statistics(headers=bearer(INFER_TOKEN))
    assert "PERMISSION_DENIED" in grpc_status(err.value)
    assert client.get_inference_statistics(headers=bearer(ADMIN_TOKEN)).model_stats
    client.close()


def test_http_tokens_and_health(secure_server: EmbeddedServer, pki: Pki) -> None:
    client = http_client(secure_server, pki)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("dense")
    with pytest.raises(InferenceServerException) as err:
        http_infer(client)
    assert err.value.status() == "401"
    with pytest.raises(InferenceServerException) as err:
        http_infer(client, headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert err.value.status() == "401"
    out = http_infer(client, headers={"Authorization": f"Bearer {INFER_TOKEN}"})
    assert out.as_numpy("probs").shape == (2, 4)
    with pytest.raises(InferenceServerException) as err:
        http_infer(client, "add_sub", headers=bearer(INFER_TOKEN))
    assert err.value.status() == "403"
    # the keep-alive connection survives refusals of requests with bodies
    assert http_infer(client, headers=bearer(INFER_TOKEN)).as_numpy("logits").shape == (2, 4)
    with pytest.raises(InferenceServerException) as err:
        client.get_server_metadata()
    assert err.value.status() == "401"
    assert client.get_server_metadata(headers=bearer(INFER_TOKEN))["name"]
    client.close()


def test_www_authenticate_and_open_metrics(secure_server: EmbeddedServer, pki: Pki) -> None:
    import ssl

    context = ssl.create_default_context(cafile=pki.ca)
    context.load_cert_chain(pki.client_cert, pki.client_key)
    url = f"https://127.0.0.1:{secure_server.server.http_port}/v2/models/dense/config"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, context=context, timeout=10)
    assert err.value.code == 401
    assert err.value.headers["www-authenticate"].startswith("Bearer")
    err.value.close()  # the error holds the TLS connection
    metrics = f"http://127.0.0.1:{secure_server.server.metrics_port}/metrics"
    with urllib.request.urlopen(metrics, timeout=10) as resp:
        assert resp.status == 200
        assert b"nv_inference_request_success" in resp.read()


def test_jwt_hs256_and_rs256(secure_server: EmbeddedServer, pki: Pki) -> None:
    client = grpc_client(secure_server, pki)
    hs = make_jwt(JWT_SECRET)
    assert grpc_infer(client, "add_sub", headers=bearer(hs)).as_numpy("OUTPUT0").shape == (2, 16)
    rs = make_jwt(pki.rsa_private, "RS256")
    assert grpc_infer(client, "add_sub", headers=bearer(rs)).as_numpy("OUTPUT1").shape == (2, 16)
    # the subject may use add_sub only; a scope claim grants the "infer" rule's models
    with pytest.raises(InferenceServerException) as err:
        grpc_infer(client, "dense", headers=bearer(hs))
    assert "PERMISSION_DENIED" in grpc_status(err.value)
    scoped = make_jwt(JWT_SECRET, sub="someone", scope="read infer")
    assert grpc_infer(client, "dense", headers=bearer(scoped)).as_numpy("probs").shape == (2, 4)
    public_pem = pki.rsa_public.read_bytes()
    bad = {
        "expired": make_jwt(JWT_SECRET, exp=time.time() - 60),
        "no expiry": make_jwt(JWT_SECRET, exp=None),
        "audience": make_jwt(JWT_SECRET, aud="someone-else"),
        "issuer": make_jwt(JWT_SECRET, iss="https://evil.test"),
        "other key": make_jwt(pki.other_private, "RS256"),
        "wrong secret": make_jwt(
            "another-secret-another-secret-another-secret-0123456789abcdef", "HS256"
        ),
        "alg none": jwt.encode({"sub": "x", "exp": time.time() + 60}, None, algorithm="none"),
        "HS384": make_jwt(JWT_SECRET, "HS384"),
        "garbage": "a.b.c",
    }
    with pytest.raises(jwt.InvalidKeyError):  # PyJWT refuses a PEM key as an HMAC secret
        make_jwt(public_pem, "HS256")
    for reason, token in bad.items():
        with pytest.raises(InferenceServerException) as err:
            grpc_infer(client, "add_sub", headers=bearer(token))
        assert "UNAUTHENTICATED" in grpc_status(err.value), reason
    client.close()
    http = http_client(secure_server, pki)
    assert http_infer(http, "add_sub", headers=bearer(rs)).as_numpy("OUTPUT0").shape == (2, 16)
    with pytest.raises(InferenceServerException) as err:
        http_infer(http, "add_sub", headers=bearer(bad["expired"]))
    assert err.value.status() == "401"
    assert "expired" in err.value.message()
    http.close()


def test_grpc_stream_checks_every_request(secure_server: EmbeddedServer, pki: Pki) -> None:
    client = grpc_client(secure_server, pki)
    results: list[Any] = []
    client.start_stream(
        lambda result, error: results.append((result, error)), headers=bearer(INFER_TOKEN)
    )
    inp = grpcclient.InferInput("x", [2, 16], "FP32")
    inp.set_data_from_numpy(X)
    client.async_stream_infer("dense", [inp], request_id="ok")
    deadline = time.monotonic() + 10
    while not results and time.monotonic() < deadline:
        time.sleep(0.01)
    assert results
    assert results[0][1] is None
    pair = []
    for n in ("INPUT0", "INPUT1"):
        i = grpcclient.InferInput(n, [2, 16], "FP32")
        i.set_data_from_numpy(X)
        pair.append(i)
    client.async_stream_infer("add_sub", pair, request_id="denied")
    deadline = time.monotonic() + 10
    while len(results) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    client.stop_stream()
    assert len(results) == 2
    assert results[1][0] is None
    assert "PERMISSION_DENIED" in str(results[1][1].status())
    client.close()
    # without a token the stream is refused at once
    client = grpc_client(secure_server, pki)
    errors: list[Any] = []
    client.start_stream(lambda result, error: errors.append(error))
    # the refusal may close the stream before this request is even sent
    with contextlib.suppress(InferenceServerException):
        client.async_stream_infer("dense", [inp])
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    client.stop_stream()
    assert errors
    assert "UNAUTHENTICATED" in str(errors[0].status())
    client.close()


def test_model_control_needs_permission(secure_server: EmbeddedServer, pki: Pki) -> None:
    client = grpc_client(secure_server, pki)
    with pytest.raises(InferenceServerException) as err:
        client.unload_model("add_sub", headers=bearer(INFER_TOKEN))
    assert "PERMISSION_DENIED" in grpc_status(err.value)
    http = http_client(secure_server, pki)
    with pytest.raises(InferenceServerException) as err:
        http.load_model("add_sub", headers=bearer(INFER_TOKEN))
    assert err.value.status() == "403"
    client.unload_model("add_sub", headers=bearer(ADMIN_TOKEN))
    http.load_model("add_sub", headers=bearer(ADMIN_TOKEN))
    assert client.is_model_ready("add_sub")
    client.close()
    http.close()


def test_shared_memory_needs_permission_and_an_allowed_key(
    secure_server: EmbeddedServer, pki: Pki
) -> None:
    tag = f"{os.getpid()}_{time.monotonic_ns() % 10**9}"
    allowed, other = f"/sonic_{tag}", f"/elsewhere_{tag}"
    handles = [shm.create_shared_memory_region(k, k, 64) for k in (allowed, other)]
    client = grpc_client(secure_server, pki)
    http = http_client(secure_server, pki)
    try:
        with pytest.raises(InferenceServerException) as err:
            client.register_system_shared_memory("r", allowed, 64, headers=bearer(INFER_TOKEN))
        assert "PERMISSION_DENIED" in grpc_status(err.value)
        with pytest.raises(InferenceServerException) as err:
            http.get_system_shared_memory_status(headers=bearer(INFER_TOKEN))
        assert err.value.status() == "403"
        with pytest.raises(InferenceServerException) as err:
            client.register_system_shared_memory("r", other, 64, headers=bearer(ADMIN_TOKEN))
        assert "PERMISSION_DENIED" in grpc_status(err.value)
        assert "allowed prefixes: sonic_" in err.value.message()
        with pytest.raises(InferenceServerException) as err:
            http.register_system_shared_memory("r", other, 64, headers=bearer(ADMIN_TOKEN))
        assert err.value.status() == "403"
        client.register_system_shared_memory("r", allowed, 64, headers=bearer(ADMIN_TOKEN))
        status = http.get_system_shared_memory_status(headers=bearer(ADMIN_TOKEN))
        assert [s["key"] for s in status] == [allowed]
        http.unregister_system_shared_memory(headers=bearer(ADMIN_TOKEN))
    finally:
        client.close()
        http.close()
        for h in handles:
            shm.destroy_shared_memory_region(h)


def write_site(tmp_path: Path, pki: Pki, token_file: Path, port: int, hosts: list[str]) -> Path:
    """A site file: the token file and mutual TLS for every server, one server per host."""
    servers = "".join(f'\n[[servers]]\naddress = "{h}"\nport = {port}\n' for h in hosts)
    site_file = tmp_path / "site.toml"
    site_file.write_text(
        f'token_file = "{token_file}"\n'
        f'tls = {{ ca_file = "{pki.ca}", cert_file = "{pki.client_cert}", '
        f'key_file = "{pki.client_key}" }}\n{servers}'
    )
    return site_file


def test_pysonic_client_from_a_site_file(
    secure_server: EmbeddedServer, pki: Pki, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(INFER_TOKEN + "\n")
    site_file = write_site(tmp_path, pki, token_file, secure_server.server.grpc_port, ["127.0.0.1"])
    site = SiteConfig.from_env({"PYSONIC_SITE_CONFIG": str(site_file)})
    assert site.servers[0].token == INFER_TOKEN
    assert INFER_TOKEN not in repr(site)
    with connect(SonicConfig("dense", timeout=10), site) as client:
        assert client.infer({"x": X})["probs"].shape == (2, 4)
    with (
        connect(SonicConfig("add_sub", timeout=10), site) as client,
        pytest.raises(PermissionDeniedError),
    ):
        client.infer({"INPUT0": X, "INPUT1": X})
    tls = site.servers[0].tls
    url = f"127.0.0.1:{secure_server.server.grpc_port}"
    transport = GrpcTransport(url, tls=tls)
    with (
        SonicClient(SonicConfig("dense", timeout=10), transport) as client,
        pytest.raises(UnauthenticatedError),
    ):
        client.infer({"x": X})
    env = {"PYSONIC_SERVERS": url, "PYSONIC_TOKEN_FILE": str(token_file)}
    assert SiteConfig.from_env(env).servers[0].token == INFER_TOKEN


def test_balanced_site_reports_refused_credentials(
    secure_server: EmbeddedServer, pki: Pki, tmp_path: Path
) -> None:
    """Two servers (one server under two names) behind the client's balancer: a wrong token is
    reported as such, not as 'no server can serve the model'; the right one works."""
    token_file = tmp_path / "token"
    port = secure_server.server.grpc_port
    site_file = write_site(tmp_path, pki, token_file, port, ["127.0.0.1", "localhost"])
    token_file.write_text("not-the-token\n")
    site = SiteConfig.from_env({"PYSONIC_SITE_CONFIG": str(site_file)})
    with (
        connect(SonicConfig("dense", timeout=10), site) as client,
        pytest.raises(UnauthenticatedError, match="refused this client's credentials"),
    ):
        client.infer({"x": X})
    token_file.write_text(INFER_TOKEN + "\n")
    site = SiteConfig.from_env({"PYSONIC_SITE_CONFIG": str(site_file)})
    with connect(SonicConfig("dense", timeout=10), site) as client:
        for _ in range(4):
            assert client.infer({"x": X})["probs"].shape == (2, 4)


# ------------------------------------------------- pysonic perf with perf_analyzer's TLS options
def run_perf_cli(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / f"perf-{len(list(tmp_path.iterdir()))}.json"
    cmd = [
        sys.executable, "-m", "pysonic", "perf", "-m", "dense", "--concurrency-range", "2",
        "-p", "300", "--max-trials", "3", "-s", "50", "--json", str(out), *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False), out


def test_perf_over_mutual_tls_with_a_token(
    secure_server: EmbeddedServer, pki: Pki, tmp_path: Path
) -> None:
    token = f"Authorization: Bearer {INFER_TOKEN}"
    grpc_tls = [
        "--ssl-grpc-use-ssl",
        "--ssl-grpc-root-certifications-file", str(pki.ca),
        "--ssl-grpc-private-key-file", str(pki.client_key),
        "--ssl-grpc-certificate-chain-file", str(pki.client_cert),
    ]  # fmt: skip
    grpc_url = f"127.0.0.1:{secure_server.server.grpc_port}"
    # two load processes: the connection settings travel to them
    done, out = run_perf_cli(tmp_path, "-u", grpc_url, *grpc_tls, "-H", token, "--processes", "2")
    assert done.returncode == 0, done.stderr + done.stdout
    doc = json.loads(out.read_text())
    assert doc["failed_total"] == 0
    assert doc["requests_total"] == doc["server_requests_total"] > 0

    https = [
        "-i", "http", "-u", f"https://127.0.0.1:{secure_server.server.http_port}",
        "--ssl-https-ca-certificates-file", str(pki.ca),
        "--ssl-https-client-certificate-file", str(pki.client_cert),
        "--ssl-https-private-key-file", str(pki.client_key),
    ]  # fmt: skip
    done, out = run_perf_cli(tmp_path, *https, "-H", token)
    assert done.returncode == 0, done.stderr + done.stdout
    doc = json.loads(out.read_text())
    assert doc["failed_total"] == 0
    assert doc["requests_total"] == doc["server_requests_total"] > 0

    # no token: the server says why, and perf says it
    done, _ = run_perf_cli(tmp_path, "-u", grpc_url, *grpc_tls)
    assert done.returncode != 0
    assert "UNAUTHENTICATED" in done.stdout + done.stderr
    # a wrong token
    done, _ = run_perf_cli(tmp_path, *https, "-H", f"Authorization: Bearer {INFER_TOKEN}x")
    assert done.returncode != 0
    assert "401" in done.stdout + done.stderr


def test_perf_tls_options_are_checked(tmp_path: Path, pki: Pki) -> None:
    done, _ = run_perf_cli(tmp_path, "-u", "127.0.0.1:1", "--ssl-https-ca-certificates-file", "x")
    assert done.returncode == 2
    assert "for -i http" in done.stderr
    done, _ = run_perf_cli(tmp_path, "-u", "127.0.0.1:1", "-H", "no colon")
    assert done.returncode == 2
    assert "Name:Value" in done.stderr
    missing = tmp_path / "missing.pem"
    done, _ = run_perf_cli(
        tmp_path, "-u", "127.0.0.1:1", "--ssl-grpc-root-certifications-file", str(missing)
    )
    assert done.returncode != 0
    assert "missing.pem" in done.stdout + done.stderr


# ---------------------------------------------------------------------- the policy itself
def test_policy_rules_and_file_errors(tmp_path: Path, pki: Pki) -> None:
    policy = AuthPolicy.load(write_policy(tmp_path, pki))
    analyst = policy.authenticate(f"Bearer {INFER_TOKEN}")
    assert analyst == Principal("analyst", frozenset({"infer"}), "token")
    policy.authorize(analyst, Target(Action.INFER, "dense"))
    policy.authorize(analyst, Target(Action.METADATA, "dense_v2"))
    with pytest.raises(PermissionDeniedError):
        policy.authorize(analyst, Target(Action.LOAD, "dense"))
    with pytest.raises(PermissionDeniedError):
        policy.authorize(analyst, Target(Action.SHARED_MEMORY))
    with pytest.raises(UnauthenticatedError):
        policy.authenticate(None)
    with pytest.raises(UnauthenticatedError):
        policy.authenticate(f"Token {INFER_TOKEN}")
    bad = {
        "tokens: [{subject: a, token: clear-text}]": "in clear",
        "tokens: [{subject: a}]": "one of sha256",
        "tokens: [{subject: a, token_env: PYSONIC_TEST_UNSET_VAR}]": "not set",
        "allow: [{actions: [fly]}]": "actions",
        "jwt: {audience: x}": "secret_file",
        "rules: []": "unknown keys",
        "tokens: {a: b}": "must be a list",
    }
    for text, message in bad.items():
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(InvalidArgumentError, match=message):
            AuthPolicy.load(tmp_path / "bad.yaml")
    os.environ["PYSONIC_TEST_TOKEN"] = "from-the-environment"
    try:
        env_policy = AuthPolicy.from_mapping(
            {"tokens": [{"subject": "env", "token_env": "PYSONIC_TEST_TOKEN"}]}
        )
    finally:
        del os.environ["PYSONIC_TEST_TOKEN"]
    assert env_policy.authenticate("bearer from-the-environment").subject == "env"
    # a verified JWT is remembered, but only until it expires
    short = make_jwt(JWT_SECRET, exp=time.time() + 1.0)
    assert policy.authenticate(f"Bearer {short}").via == "jwt"
    assert policy.authenticate(f"Bearer {short}").subject == "batch-job"
    deadline = time.monotonic() + 5
    while time.time() < jwt.decode(short, options={"verify_signature": False})["exp"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(UnauthenticatedError, match="expired"):
        policy.authenticate(f"Bearer {short}")
    assert hashlib.sha256(b"x").hexdigest() == token_digest("x")


def test_no_secret_is_ever_logged(repo: Path, pki: Pki, tmp_path: Path) -> None:
    """A real ``pysonic serve`` with verbose logging: tokens, good and bad, never reach its log."""
    policy = write_policy(tmp_path, pki)
    expired = make_jwt(JWT_SECRET, exp=time.time() - 60)
    good_jwt = make_jwt(pki.rsa_private, "RS256")
    secrets = [INFER_TOKEN, ADMIN_TOKEN, JWT_SECRET, expired, good_jwt, "wrong-token-3b9e"]
    args = ["--auth-policy", str(policy), "--http-port", "0", "--log-verbose", "1"]
    with ServerProcess(repo, models=["dense", "add_sub"], extra_args=args) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        assert grpc_infer(client, headers=bearer(INFER_TOKEN)).as_numpy("probs").shape == (2, 4)
        assert http_infer(http, "add_sub", headers=bearer(good_jwt)).as_numpy("OUTPUT0") is not None
        for token in (expired, "wrong-token-3b9e"):
            with pytest.raises(InferenceServerException):
                grpc_infer(client, headers=bearer(token))
            with pytest.raises(InferenceServerException):
                http_infer(http, headers=bearer(token))
        with pytest.raises(InferenceServerException):
            grpc_infer(client, "add_sub", headers=bearer(INFER_TOKEN))  # denied: logged
        client.unload_model("add_sub", headers=bearer(ADMIN_TOKEN))
        client.close()
        http.close()
        log = server.log_text()
    assert "denied: subject 'analyst'" in log  # the log does record the refusals...
    for secret in secrets:  # ...but never a credential
        assert secret not in log
        assert secret[:12] not in log


def test_grpc_errors_map_to_pysonic_errors() -> None:
    from pysonic.errors import from_grpc_status

    assert isinstance(from_grpc_status(grpc.StatusCode.UNAUTHENTICATED, "x"), UnauthenticatedError)
    assert isinstance(
        from_grpc_status(grpc.StatusCode.PERMISSION_DENIED, "x"), PermissionDeniedError
    )


def test_serve_command_line_tls_and_shm_prefix(repo: Path, pki: Pki) -> None:
    """``pysonic serve --tls-cert/--tls-key/--tls-client-ca --shm-allowed-prefix``."""
    args = [
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.ca), "--shm-allowed-prefix", "sonic_",
    ]  # fmt: skip
    with ServerProcess(repo, models=["dense"], extra_args=args) as server:
        assert "TLS mutual" in server.log_text()
        plain = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=5)
        plain.close()
        client = grpcclient.InferenceServerClient(
            server.grpc_url,
            ssl=True,
            root_certificates=str(pki.ca),
            private_key=str(pki.client_key),
            certificate_chain=str(pki.client_cert),
        )
        assert grpc_infer(client).as_numpy("probs").shape == (2, 4)
        key = f"/elsewhere_{os.getpid()}"
        handle = shm.create_shared_memory_region("r", key, 64)
        try:
            with pytest.raises(InferenceServerException) as err:
                client.register_system_shared_memory("r", key, 64)
            assert "PERMISSION_DENIED" in grpc_status(err.value)
        finally:
            shm.destroy_shared_memory_region(handle)
            client.close()

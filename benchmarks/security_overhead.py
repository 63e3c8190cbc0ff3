"""What TLS and bearer-token authentication cost: requests/s and latency, with and without.

One run, one machine: four ``pysonic serve`` processes on the same repository (plain; bearer
tokens; TLS; TLS + bearer tokens), each driven in turn by the same closed-loop client at a fixed
concurrency with the identity model (``identity_fp32``, FP32 [1, 16]: the protocol's cost, not a
model's). gRPC goes through pysonic's own ``GrpcTransport`` (TLS credentials, ``authorization``
metadata), HTTP through ``tritonclient.http.aio`` (an ``ssl.SSLContext``, an ``Authorization``
header). Tokens: a static token (one SHA-256 and a dict lookup per request), a JWT signed with
HS256 and one signed with RS256 (a signature check per request). Certificates and keys are made
here (trustme, cryptography). The number to read is the server's CPU time per request (from
/proc, so it holds on a busy machine) and its ratio to the plain server; requests/s and latency
are printed too, but share the cores with the client and anything else running.

    python benchmarks/security_overhead.py --quick --json out/security_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
import numpy as np
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from rich.console import Console
from rich.table import Table

from _proc import cpu_seconds
from pysonic.client import GrpcTransport, TLSConfig
from pysonic.protocol.types import InferRequest, InferTensor
from pysonic.server import ServerProcess
from pysonic.server.auth import token_digest

ROOT = Path(__file__).resolve().parent.parent
MODEL = "identity_fp32"
TOKEN = "benchmark-static-token-0123456789"
SECRET = "benchmark-hs256-secret-0123456789abcdef0123456789abcdef0123456789"
console = Console(width=120)


def make_pki(d: Path) -> dict[str, Any]:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(d / "ca.pem")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(d / "server.key")
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(d / "server.pem", append=i > 0)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "jwt.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (d / "jwt.secret").write_text(SECRET)
    (d / "jwt.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (d / "auth.yaml").write_text(
        f"""
tokens: [{{subject: bench, sha256: {token_digest(TOKEN)}, scopes: [infer]}}]
jwt: {{secret_file: {d / "jwt.secret"}, public_key_file: {d / "jwt.pub"}, audience: bench}}
allow: [{{subjects: [bench], models: ["*"], actions: [infer]}}]
"""
    )
    claims = {"sub": "bench", "aud": "bench", "scope": "infer", "exp": time.time() + 3600}
    return {
        "tokens": {
            "static token": TOKEN,
            "JWT HS256": jwt.encode(claims, SECRET, algorithm="HS256"),
            "JWT RS256": jwt.encode(claims, key, algorithm="RS256"),
        }
    }


async def closed_loop(call: Any, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    for _ in range(20):  # warm-up: connections, TLS handshakes, sessions
        await call()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies) + 20,
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1e3,
    }


async def grpc_case(url: str, tls: TLSConfig | None, token: str | None, c: int, s: float):
    transport = GrpcTransport(url, tls=tls, token=token)
    x = np.ones((1, 16), np.float32)
    request = InferRequest(MODEL, [InferTensor("INPUT0", "FP32", (1, 16), x)])
    try:
        return await closed_loop(lambda: transport.infer(request, timeout=10), c, s)
    finally:
        await transport.close()


async def http_case(url: str, ca: Path | None, token: str | None, c: int, s: float):
    import tritonclient.http.aio as httpclient

    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    client = httpclient.InferenceServerClient(url, ssl=ca is not None, ssl_context=context)
    inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(np.ones((1, 16), np.float32), binary_data=True)
    headers = {"authorization": f"Bearer {token}"} if token else None
    try:
        return await closed_loop(lambda: client.infer(MODEL, [inp], headers=headers), c, s)
    finally:
        await client.close()


def check_costs(d: Path, tokens: dict[str, str], n: int) -> list[dict[str, Any]]:
    """The policy check alone, in-process (no sockets): us per request, for each token kind;
    JWTs both at first sight (a signature check) and remembered (the verifier's memory)."""
    from pysonic.server.auth import Action, AuthPolicy, Target

    key = serialization.load_pem_private_key((d / "jwt.key").read_bytes(), None)
    target = Target(Action.INFER, MODEL)
    out = []
    for kind, token in tokens.items():
        policy = AuthPolicy.load(d / "auth.yaml")
        if kind == "static token":
            fresh = [token] * n
        else:
            claims = jwt.decode(token, options={"verify_signature": False})
            signer = SECRET if kind.endswith("HS256") else key
            alg = kind.split()[-1]
            fresh = [jwt.encode({**claims, "jti": str(i)}, signer, algorithm=alg) for i in range(n)]
        t0 = time.perf_counter()
        for t in fresh:
            policy.check(f"Bearer {t}", target)
        first = (time.perf_counter() - t0) / n * 1e6
        t0 = time.perf_counter()
        for _ in range(n):
            policy.check(f"Bearer {token}", target)
        again = (time.perf_counter() - t0) / n * 1e6
        out.append({"token": kind, "first_us": first, "remembered_us": again})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s per case instead of 10 s")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    seconds = 3.0 if args.quick else 10.0
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pki = make_pki(d)
        checks = check_costs(d, pki["tokens"], 200 if args.quick else 1000)
        tls_args = ["--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key")]
        auth_args = ["--auth-policy", str(d / "auth.yaml")]
        servers = {
            "plain": [],
            "tokens": auth_args,
            "TLS": tls_args,
            "TLS + tokens": tls_args + auth_args,
        }
        for name, extra in servers.items():
            args_ = ["--http-port", "0", "--no-allow-metrics", *extra]
            with ServerProcess(ROOT / "model_repository", models=[MODEL], extra_args=args_) as srv:
                tls = TLSConfig(ca_file=str(d / "ca.pem")) if "TLS" in name else None
                ca = d / "ca.pem" if "TLS" in name else None
                tokens = pki["tokens"] if "tokens" in name else {"none": None}
                for token_kind, token in tokens.items():
                    for protocol in ("gRPC", "HTTP"):
                        if protocol == "gRPC":
                            coro = grpc_case(srv.grpc_url, tls, token, args.concurrency, seconds)
                        else:
                            url = f"127.0.0.1:{srv.http_port}"
                            coro = http_case(url, ca, token, args.concurrency, seconds)
                        cpu0 = cpu_seconds(srv.proc.pid)
                        result = asyncio.run(coro)
                        cpu = cpu_seconds(srv.proc.pid) - cpu0
                        result["server_cpu_us"] = cpu / result.pop("requests") * 1e6
                        rows.append(
                            {"server": name, "protocol": protocol, "token": token_kind, **result}
                        )
    base = {r["protocol"]: r for r in rows if r["server"] == "plain"}
    table = Table(title=f"TLS and auth overhead (identity [1,16], concurrency {args.concurrency})")
    cols = ("protocol", "server", "token", "server CPU us/req", "vs plain", "req/s", "p50 ms")
    for col in cols:
        table.add_column(
            col, justify="right" if col not in ("protocol", "server", "token") else "left"
        )
    for r in sorted(rows, key=lambda r: r["protocol"]):
        r["cpu_vs_plain"] = r["server_cpu_us"] / base[r["protocol"]]["server_cpu_us"]
        table.add_row(
            r["protocol"],
            r["server"],
            r["token"],
            f"{r['server_cpu_us']:,.0f}",
            f"{r['cpu_vs_plain']:.2f}",
            f"{r['req_per_s']:,.0f}",
            f"{r['p50_ms']:.2f}",
        )
    console.print(table)
    costs = Table(title="the auth check alone, in-process (us per request)")
    for col in ("token", "first use (verify)", "same token again"):
        costs.add_column(col, justify="right" if col != "token" else "left")
    for c in checks:
        costs.add_row(c["token"], f"{c['first_us']:.1f}", f"{c['remembered_us']:.1f}")
    console.print(costs)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"concurrency": args.concurrency, "rows": rows, "checks": checks}, indent=2)
        )
        console.print(f"results: {args.json}")


if __name__ == "__main__":
    main()

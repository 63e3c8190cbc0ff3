"""How fast an overloaded pysonic server says no: refusal latency per admission limit.

One real ``pysonic serve`` process with a Python-backend model that holds each request for 10 s
(one instance, ``max_queue_size: 4``), ``--max-inflight-per-client 4`` and
``--max-inflight-bytes 64 MiB``, plus ``identity_fp32`` as the baseline of an ordinary request.
Each case first puts the server over the limit, then sends requests one at a time and times
each answer at the client (so the figure is one round trip, not a client-side queue):

  * queue full, gRPC and HTTP: RESOURCE_EXHAUSTED / 503 from the model's queue bound;
  * per-client limit, gRPC: RESOURCE_EXHAUSTED while the same client id holds 4 requests;
  * in-flight byte budget, HTTP: 503 from ``Content-Length`` alone while 48 MiB bodies are held;
  * 10 GB declared body, HTTP: 400 from the headers (nothing read);
  * baseline: a successful ``identity_fp32`` [1,16] request over gRPC and HTTP.

    python benchmarks/overload.py --quick --json out/overload.json
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from rich.console import Console
from rich.table import Table
from tritonclient.utils import InferenceServerException

import _raw_http as raw_http  # benchmarks/ is on sys.path when a script there runs
from pysonic.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
console = Console()

HOLD = """
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            time.sleep(10.0)
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return responses
"""

HOLD_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 1
input [{{ name: "x" data_type: TYPE_FP32 dims: [-1] }}]
output [{{ name: "y" data_type: TYPE_FP32 dims: [-1] }}]
dynamic_batching {{ default_queue_policy {{ max_queue_size: {queue} }} }}
instance_group [{{ count: 1 kind: KIND_CPU }}]
"""


def repository(root: Path) -> Path:
    for name, queue in (("hold", 4), ("hold_wide", 1000)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(textwrap.dedent(HOLD))
        (root / name / "config.pbtxt").write_text(HOLD_CONFIG.format(name=name, queue=queue))
    src = ROOT / "model_repository" / "identity_fp32"
    (root / "identity_fp32" / "1").mkdir(parents=True)
    (root / "identity_fp32" / "config.pbtxt").write_text((src / "config.pbtxt").read_text())
    (root / "identity_fp32" / "1" / "model.onnx").write_bytes(
        (src / "1" / "model.onnx").read_bytes()
    )
    return root


def _grpc(x: np.ndarray, tensor: str = "x") -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput(tensor, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


def _http(x: np.ndarray, tensor: str = "x") -> list[httpclient.InferInput]:
    inp = httpclient.InferInput(tensor, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return [inp]


def _raw_status(port: int, head: bytes, *, keep: bool = False) -> tuple[int, socket.socket]:
    sock = raw_http.send(port, head)
    code = raw_http.status(sock)
    if not keep:
        sock.close()
    return code, sock


def _head(port: int, length: int, model: str = "hold_wide", expect: bool = False) -> bytes:
    return (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Length: {length}\r\nInference-Header-Content-Length: 64\r\n"
        + ("Expect: 100-continue\r\n" if expect else "")
        + "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def _ignore(result: object, error: object) -> None:
    """Fillers' answers do not matter (they only hold the server at its limit)."""


def timed(n: int, call: Callable[[], str], expect: str) -> list[float]:
    """``n`` calls one after the other; each must answer ``expect``; their latencies (s)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        got = call()
        out.append(time.perf_counter() - t0)
        if got != expect:
            msg = f"expected {expect}, got {got}"
            raise RuntimeError(msg)
    return out


def run(n: int) -> list[dict]:
    args = [
        "--http-port", "0",
        "--max-inflight-per-client", "4",
        "--max-inflight-bytes", str(64 << 20),
        "--drain-timeout", "1",
    ]  # fmt: skip
    rows: list[dict] = []
    x = np.ones((1, 16), np.float32)
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(
            repository(Path(tmp)), models=["hold", "hold_wide", "identity_fp32"], extra_args=args
        ) as server,
    ):
        assert server.http_port is not None
        port = server.http_port
        g = grpcclient.InferenceServerClient(server.grpc_url)
        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=8)

        def grpc_status(model: str, who: str, tensor: str = "x") -> str:
            try:
                g.infer(model, _grpc(x, tensor), headers={"pysonic-client-id": who})
            except InferenceServerException as err:
                return str(err.status()).removeprefix("StatusCode.")
            return "OK"

        def http_status(model: str, tensor: str = "x") -> str:
            try:
                h.infer(model, _http(x, tensor))
            except InferenceServerException as err:
                return str(err.status())
            return "OK"

        def add(case: str, latencies: list[float]) -> None:
            ms = np.array(latencies) * 1e3
            rows.append(
                {
                    "case": case,
                    "n": len(ms),
                    "p50_ms": round(float(np.percentile(ms, 50)), 3),
                    "p99_ms": round(float(np.percentile(ms, 99)), 3),
                    "max_ms": round(float(ms.max()), 3),
                }
            )

        for _ in range(20):  # warm connections and code paths
            grpc_status("identity_fp32", "base", "INPUT0")
            http_status("identity_fp32", "INPUT0")
        add(
            "baseline: OK, gRPC identity [1,16]",
            timed(n, lambda: grpc_status("identity_fp32", "base", "INPUT0"), "OK"),
        )
        add(
            "baseline: OK, HTTP identity [1,16]",
            timed(n, lambda: http_status("identity_fp32", "INPUT0"), "OK"),
        )
        # fill "hold": one running + 4 queued (a sixth is refused), from distinct clients
        for i in range(6):
            g.async_infer(
                "hold", _grpc(x), callback=_ignore, headers={"pysonic-client-id": f"f{i}"}
            )
        time.sleep(0.3)  # let the five arrive (the model holds each for 10 s)
        add(
            "queue full: RESOURCE_EXHAUSTED, gRPC",
            timed(n, lambda: grpc_status("hold", "probe"), "RESOURCE_EXHAUSTED"),
        )
        add("queue full: 503, HTTP", timed(n, lambda: http_status("hold"), "503"))
        for i in range(4):
            g.async_infer("hold_wide", _grpc(x), callback=_ignore,
                          headers={"pysonic-client-id": "greedy"})  # fmt: skip
            del i
        time.sleep(0.3)
        add(
            "per-client limit: RESOURCE_EXHAUSTED, gRPC",
            timed(n, lambda: grpc_status("hold_wide", "greedy"), "RESOURCE_EXHAUSTED"),
        )
        _, held = _raw_status(port, _head(port, 48 << 20, expect=True), keep=True)  # 100-continue
        add(
            "byte budget: 503 from Content-Length, HTTP",
            timed(n, lambda: str(_raw_status(port, _head(port, 32 << 20))[0]), "503"),
        )
        held.close()
        add(
            "10 GB declared body: 400 from headers, HTTP",
            timed(n, lambda: str(_raw_status(port, _head(port, 10 << 30))[0]), "400"),
        )
        g.close()
        h.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="50 requests per case (default 500)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    rows = run(50 if args.quick else 500)
    table = Table(title="refusal latency at the client (one request at a time)")
    for col in ("case", "n", "p50 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        table.add_row(r["case"], str(r["n"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['max_ms']:.2f}")  # fmt: skip
    console.print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()

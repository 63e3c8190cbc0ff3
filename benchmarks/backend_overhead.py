"""What a backend costs per request: the identity model as ONNX, as a Triton Python model, and
as a one-step ensemble around the ONNX one, served and called directly.

Served: sequential batch-1 requests (one in flight, so the number is latency, not throughput)
from tritonclient.grpc to an in-process server (EmbeddedServer). Direct: the backend's own call,
no server. The differences are the Python backend's per-request cost (pb_utils objects, the
model.py's Python) and the ensemble's (one more trip through the core).

    python benchmarks/backend_overhead.py --requests 2000
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from pysonic.backends import BackendRequest, InstanceSpec, load_backend_class
from pysonic.repository import load_model_config
from pysonic.server import EmbeddedServer, ServerOptions

SHIPPED = Path(__file__).resolve().parents[1] / "model_repository"
IDENTITY_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return responses
"""
ENSEMBLE = """
platform: "ensemble"
max_batch_size: 64
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [-1] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [-1] }]
ensemble_scheduling { step [{ model_name: "identity_fp32" model_version: -1
  input_map { key: "INPUT0" value: "INPUT0" } output_map { key: "OUTPUT0" value: "OUTPUT0" } }] }
"""


def build(repo: Path) -> None:
    shutil.copytree(SHIPPED / "identity_fp32", repo / "identity_fp32")
    (repo / "identity_py" / "1").mkdir(parents=True)
    (repo / "identity_py" / "1" / "model.py").write_text(IDENTITY_PY)
    text = (SHIPPED / "identity_fp32" / "config.pbtxt").read_text()
    (repo / "identity_py" / "config.pbtxt").write_text(
        text.replace('"identity_fp32"', '"identity_py"').replace('"onnxruntime"', '"python"')
    )
    (repo / "identity_ensemble" / "1").mkdir(parents=True)
    (repo / "identity_ensemble" / "config.pbtxt").write_text(ENSEMBLE)


def served_us(client: grpcclient.InferenceServerClient, model: str, n: int) -> float:
    x = np.ones((1, 16), np.float32)
    i = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    i.set_data_from_numpy(x)
    for _ in range(100):
        client.infer(model, [i])
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n // 5):
            client.infer(model, [i])
        samples.append((time.perf_counter() - start) / (n // 5) * 1e6)
    return statistics.median(samples)


def direct_us(repo: Path, model: str, backend: str, n: int) -> float:
    spec = InstanceSpec(model, 1, repo / model / "1", load_model_config(repo / model))
    instance = load_backend_class(backend)(spec)
    x = {"INPUT0": np.ones((1, 16), np.float32)}
    try:
        if instance.per_request:
            call = lambda: instance.execute_requests([BackendRequest(x)])  # noqa: E731
        else:
            call = lambda: instance.execute(x)  # noqa: E731
        for _ in range(100):
            call()
        start = time.perf_counter()
        for _ in range(n):
            call()
        return (time.perf_counter() - start) / n * 1e6
    finally:
        instance.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        build(repo)
        print(f"{'model':<20} {'served us/request':>18} {'direct us/call':>15}")
        options = ServerOptions(
            model_repository=repo, host="127.0.0.1", grpc_port=0, metrics_port=0
        )
        with (
            EmbeddedServer(options) as server,
            grpcclient.InferenceServerClient(server.grpc_url) as c,
        ):
            rows = [
                ("identity_fp32", "onnxruntime"),
                ("identity_py", "python"),
                ("identity_ensemble", None),
            ]
            for model, backend in rows:
                served = served_us(c, model, args.requests)
                direct = direct_us(repo, model, backend, args.requests) if backend else float("nan")
                print(f"{model:<20} {served:>18.1f} {direct:>15.1f}")


if __name__ == "__main__":
    main()

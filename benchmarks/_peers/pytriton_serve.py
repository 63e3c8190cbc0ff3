"""Serve model-repository ONNX files with PyTriton (a real NVIDIA tritonserver) + onnxruntime.

Run with the PyTriton venv's Python (nvidia-pytriton 0.7 needs numpy < 2; it imports nothing
from pysonic)::

    python pytriton_serve.py PLAN_JSON GRPC_PORT HTTP_PORT METRICS_PORT WORKSPACE

``PLAN_JSON`` is a list of ``ModelPlan`` dicts (see ``plan.py``): for each model, one PyTriton
infer function per instance (PyTriton's instance count is the number of functions bound), each
with its own ``InferenceSession`` (``intra_op_num_threads`` from the plan, one inter-op thread),
behind Triton's dynamic batcher with the plan's preferred sizes and queue delay. The tritonserver
binary needs ``LD_LIBRARY_PATH`` to hold the interpreter's libdir under a pyenv Python, so the
caller sets it. PyTriton's workspace (the tritonserver copy, model stubs) goes to ``WORKSPACE``,
which the caller removes. Prints ``READY grpc=PORT`` once Triton serves; runs until SIGTERM or
SIGINT.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

_NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}


def _session(plan: dict[str, Any]) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = plan["intra_op_threads"]
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(plan["onnx"], opts, providers=["CPUExecutionProvider"])


def _infer_function(plan: dict[str, Any]) -> Callable[..., dict[str, np.ndarray]]:
    session = _session(plan)
    names = [o[0] for o in plan["outputs"]]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, inputs), strict=True))

    return infer


def _tensors(ios: list[list[Any]]) -> list[Tensor]:
    return [Tensor(name=n, dtype=_NUMPY[d], shape=tuple(dims)) for n, d, dims in ios]


def _bind(triton: Triton, plan: dict[str, Any]) -> None:
    batcher = (
        DynamicBatcher(
            max_queue_delay_microseconds=plan["max_queue_delay_us"],
            preferred_batch_size=plan["preferred_batch_sizes"] or None,
        )
        if plan["dynamic_batching"]
        else None  # PyTriton writes no dynamic_batching block then, like the model's config
    )
    triton.bind(
        model_name=plan["name"],
        infer_func=[_infer_function(plan) for _ in range(plan["instances"])],
        inputs=_tensors(plan["inputs"]),
        outputs=_tensors(plan["outputs"]),
        config=ModelConfig(max_batch_size=plan["max_batch_size"], batcher=batcher),
        strict=False,
    )


def main() -> None:
    # A handler, not a blocked mask: a blocked SIGINT would be inherited by tritonserver, which
    # PyTriton stops with SIGINT, and the shutdown would hang.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    plans = json.loads(Path(sys.argv[1]).read_text())
    grpc_port, http_port, metrics_port = (int(a) for a in sys.argv[2:5])
    workspace = Path(sys.argv[5])
    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=grpc_port,
        http_address="127.0.0.1",
        http_port=http_port,
        metrics_port=metrics_port,
        exit_on_error=True,
    )
    # statistics / repository endpoints without PyTriton's access token, as a plain tritonserver
    security = TritonSecurityConfig(restricted_endpoints=[])
    with Triton(config=config, workspace=workspace, security_config=security) as triton:
        for plan in plans:
            _bind(triton, plan)
        triton.run()
        print(f"READY grpc={grpc_port}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()

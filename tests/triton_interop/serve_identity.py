"""Serve an add/sub model with PyTriton (a real NVIDIA tritonserver) for interop tests.

Run with the PyTriton venv's Python (numpy < 2):
    python serve_identity.py GRPC_PORT HTTP_PORT METRICS_PORT
It prints "READY" once Triton serves, and runs until terminated.
"""

import signal
import sys

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig


@batch
def add_sub(INPUT0, INPUT1):
    return {"OUTPUT0": INPUT0 + INPUT1, "OUTPUT1": INPUT0 - INPUT1}


def main() -> None:
    grpc_port, http_port, metrics_port = (int(a) for a in sys.argv[1:4])
    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=grpc_port,
        http_address="127.0.0.1",
        http_port=http_port,
        metrics_port=metrics_port,
        exit_on_error=True,
    )
    # statistics / model config without PyTriton's access token, as a plain tritonserver
    security = TritonSecurityConfig(restricted_endpoints=[])
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name="add_sub",
            infer_func=add_sub,
            inputs=[
                Tensor(name="INPUT0", dtype=np.float32, shape=(16,)),
                Tensor(name="INPUT1", dtype=np.float32, shape=(16,)),
            ],
            outputs=[
                Tensor(name="OUTPUT0", dtype=np.float32, shape=(16,)),
                Tensor(name="OUTPUT1", dtype=np.float32, shape=(16,)),
            ],
            config=ModelConfig(max_batch_size=8, batcher=DynamicBatcher()),
        )
        triton.run()
        print("READY", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    main()

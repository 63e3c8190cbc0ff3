"""Shared memory vs tensors in the request: latency of one identity call, by tensor size.

A job next to a local server can skip the network copies: inputs are read from, and outputs
written into, POSIX shared memory registered with the server (tritonclient's own helpers). Both
paths include the client's work (filling the region / serializing the request, reading the
result). The server is a real `pysonic serve` subprocess on the bundled `identity_fp32`.

    python benchmarks/shared_memory.py --repeats 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm

from pysonic.server import ServerProcess

REPO = Path(__file__).resolve().parent.parent / "model_repository"


def _time(call: Callable[[], np.ndarray], expected: np.ndarray, repeats: int) -> list[float]:
    assert np.array_equal(call(), expected)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 1 << 20, 4 << 20])
    args = parser.parse_args()
    key = f"/pysonic_bench_{os.getpid()}"
    with ServerProcess(REPO, models=["identity_fp32"]) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        print(f"{'floats':>9} {'MB':>7} {'path':>4} {'median ms':>10} {'p90 ms':>8}")
        for n in args.sizes:
            x = np.random.default_rng(0).random((1, n), dtype=np.float32)
            size = x.nbytes
            region = shm.create_shared_memory_region("io", key, 2 * size)
            client.register_system_shared_memory("io", key, 2 * size)

            def in_request(x: np.ndarray = x, n: int = n) -> np.ndarray:
                i = grpcclient.InferInput("INPUT0", [1, n], "FP32")
                i.set_data_from_numpy(x)
                return client.infer("identity_fp32", [i]).as_numpy("OUTPUT0")

            def in_shm(x: np.ndarray = x, n: int = n, size: int = size, region=region):
                shm.set_shared_memory_region(region, [x])
                i = grpcclient.InferInput("INPUT0", [1, n], "FP32")
                i.set_shared_memory("io", size)
                o = grpcclient.InferRequestedOutput("OUTPUT0")
                o.set_shared_memory("io", size, offset=size)
                client.infer("identity_fp32", [i], outputs=[o])
                return shm.get_contents_as_numpy(region, np.float32, [1, n], offset=size)

            try:
                for name, call in (("grpc", in_request), ("shm", in_shm)):
                    t = sorted(_time(call, x, args.repeats))
                    p90 = t[int(0.9 * (len(t) - 1))]
                    print(
                        f"{n:>9} {size / 1e6:>7.3f} {name:>4} "
                        f"{statistics.median(t) * 1e3:>10.2f} {p90 * 1e3:>8.2f}"
                    )
            finally:
                client.unregister_system_shared_memory()
                shm.destroy_shared_memory_region(region)
        client.close()


if __name__ == "__main__":
    main()

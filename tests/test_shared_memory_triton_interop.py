"""The same shared-memory requests against a real NVIDIA Triton (PyTriton) and against pysonic.

Same data back, same response layout (an empty raw entry for an output in shared memory), and
the same status codes except where pysonic deliberately answers INVALID_ARGUMENT for a client
mistake that Triton reports as INTERNAL (documented in docs/server.md).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from conftest import build_repository
from pysonic.server import EmbeddedServer, ServerOptions
from test_client_triton_interop import triton_url  # noqa: F401 - the real Triton fixture

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

#: case -> (Triton's code, pysonic's code)
EXPECTED = {
    "double register": ("ALREADY_EXISTS", "ALREADY_EXISTS"),
    "missing key": ("INTERNAL", "INVALID_ARGUMENT"),
    "window past the object": ("INTERNAL", "INVALID_ARGUMENT"),
    "status of unknown region": ("NOT_FOUND", "NOT_FOUND"),
    "unregister unknown region": ("OK", "OK"),
    "output region too small": ("INTERNAL", "INVALID_ARGUMENT"),
    "input byte size mismatch": ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    "input past the region": ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    "unknown region": ("NOT_FOUND", "NOT_FOUND"),
}


@pytest.fixture(scope="module")
def pysonic_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    options = ServerOptions(
        model_repository=build_repository(tmp_path_factory.mktemp("repo")),
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=None,
        model_control_mode="explicit",
        load_models=["add_sub"],
    )
    with EmbeddedServer(options) as server:
        yield server.grpc_url


def _input(region: str, size: int, offset: int = 0) -> grpcclient.InferInput:
    i = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    i.set_shared_memory(region, size, offset)
    return i


def _output(size: int, offset: int) -> grpcclient.InferRequestedOutput:
    o = grpcclient.InferRequestedOutput("OUTPUT0")
    o.set_shared_memory("r", size, offset)
    return o


def _probe(url: str) -> tuple[np.ndarray, list[int], np.ndarray, dict[str, str]]:
    client = grpcclient.InferenceServerClient(url)
    key = f"/pysonic_interop_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    handle = shm.create_shared_memory_region("r", key, 256)
    try:
        a = np.full((1, 16), 3, np.float32)
        b = np.arange(16, dtype=np.float32).reshape(1, 16)
        shm.set_shared_memory_region(handle, [a])
        client.register_system_shared_memory("r", key, 256)
        raw = grpcclient.InferInput("INPUT1", [1, 16], "FP32")
        raw.set_data_from_numpy(b)
        result = client.infer(
            "add_sub",
            [_input("r", 64), raw],
            outputs=[_output(64, 64), grpcclient.InferRequestedOutput("OUTPUT1")],
        )
        sizes = [len(x) for x in result.get_response().raw_output_contents]
        in_shm = shm.get_contents_as_numpy(handle, np.float32, [1, 16], 64).copy()
        cases: dict[str, Callable[[], object]] = {
            "double register": lambda: client.register_system_shared_memory("r", key, 256),
            "missing key": lambda: client.register_system_shared_memory("x", key + "_no", 64),
            "window past the object": lambda: client.register_system_shared_memory(
                "y", key, 64, 256
            ),
            "status of unknown region": lambda: client.get_system_shared_memory_status("zz"),
            "unregister unknown region": lambda: client.unregister_system_shared_memory("zz"),
            "output region too small": lambda: client.infer(
                "add_sub", [_input("r", 64), raw], outputs=[_output(32, 128)]
            ),
            "input byte size mismatch": lambda: client.infer("add_sub", [_input("r", 60), raw]),
            "input past the region": lambda: client.infer("add_sub", [_input("r", 64, 250), raw]),
            "unknown region": lambda: client.infer("add_sub", [_input("zz", 64), raw]),
        }
        codes = {}
        for name, call in cases.items():
            try:
                call()
                codes[name] = "OK"
            except InferenceServerException as err:
                codes[name] = str(err.status()).removeprefix("StatusCode.")
        return in_shm, sizes, result.as_numpy("OUTPUT1"), codes
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)
        client.close()


def test_shared_memory_behaves_like_triton(triton_url: str, pysonic_url: str) -> None:  # noqa: F811
    t_shm, t_sizes, t_raw, t_codes = _probe(triton_url)
    p_shm, p_sizes, p_raw, p_codes = _probe(pysonic_url)
    np.testing.assert_array_equal(p_shm, t_shm)
    np.testing.assert_array_equal(p_raw, t_raw)
    assert t_sizes == p_sizes == [0, 64]
    assert t_codes == {k: v[0] for k, v in EXPECTED.items()}
    assert p_codes == {k: v[1] for k, v in EXPECTED.items()}

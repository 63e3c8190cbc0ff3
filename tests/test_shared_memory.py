"""System shared memory through tritonclient.grpc + tritonclient.utils.shared_memory, unchanged.

Real servers (in-process on a free port, and one ``pysonic serve`` subprocess for the
file-descriptor accounting); real POSIX shm objects created by tritonclient's own helper.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import (
    InferenceServerException,
    serialize_byte_tensor,
    serialized_byte_size,
)

from conftest import build_repository
from pysonic.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from pysonic.protocol.shm import (
    SharedMemoryRef,
    SharedMemoryRegistry,
    in_shared_memory,
    output_target,
    read_input,
    write_outputs,
)
from pysonic.protocol.types import InferResponse, InferTensor, RequestedOutput
from pysonic.server import EmbeddedServer, ServerOptions, ServerProcess

pytestmark = pytest.mark.timeout(180)

SHIPPED = Path(__file__).resolve().parent.parent / "model_repository"
LIMIT = 8 << 20  # the test server's shared-memory cap


def _key(tag: str) -> str:
    return f"/pysonic_test_{os.getpid()}_{tag}_{uuid.uuid4().hex[:8]}"


class Regions:
    """Creates shm objects with tritonclient's helper; destroys them and unregisters at the end."""

    def __init__(self, client: grpcclient.InferenceServerClient) -> None:
        self.client = client
        self.handles: list = []

    def create(self, name: str, byte_size: int, *, register: bool = True):
        key = _key(name)
        handle = shm.create_shared_memory_region(name, key, byte_size)
        self.handles.append(handle)
        if register:
            self.client.register_system_shared_memory(name, key, byte_size)
        return handle, key

    def close(self) -> None:
        self.client.unregister_system_shared_memory()
        for h in self.handles:
            shm.destroy_shared_memory_region(h)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_repository(tmp_path_factory.mktemp("shmrepo"))
    for name in ("identity_fp32", "dense_tagger"):
        shutil.copytree(SHIPPED / name, root / name)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[EmbeddedServer]:
    options = ServerOptions(
        model_repository=repo,
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=None,
        model_control_mode="explicit",
        load_models=["identity_fp32", "dense_tagger", "identity_bytes", "add_sub", "sleepy"],
        drain_timeout=10,
        shared_memory_max_bytes=LIMIT,
    )
    with EmbeddedServer(options) as srv:
        yield srv


@pytest.fixture
def client(server: EmbeddedServer) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture
def regions(client: grpcclient.InferenceServerClient) -> Iterator[Regions]:
    r = Regions(client)
    yield r
    r.close()


def _shm_input(name: str, shape: list[int], datatype: str, region: str, size: int, offset=0):
    i = grpcclient.InferInput(name, shape, datatype)
    i.set_shared_memory(region, size, offset)
    return i


def _shm_output(name: str, region: str, size: int, offset: int = 0):
    o = grpcclient.InferRequestedOutput(name)
    o.set_shared_memory(region, size, offset)
    return o


def _raw_input(name: str, arr: np.ndarray, datatype: str = "FP32"):
    i = grpcclient.InferInput(name, list(arr.shape), datatype)
    i.set_data_from_numpy(arr)
    return i


def _code(err: InferenceServerException) -> str:
    return str(err.status())


# ---------------------------------------------------------------- data path
def test_metadata_advertises_system_shared_memory_only(client) -> None:
    extensions = client.get_server_metadata().extensions
    assert "system_shared_memory" in extensions
    assert "cuda_shared_memory" not in extensions


def test_identity_in_and_out_of_one_region(client, regions: Regions) -> None:
    x = np.arange(2 * 10, dtype=np.float32).reshape(2, 10)
    n = x.nbytes
    handle, _ = regions.create("ident", 4096)
    shm.set_shared_memory_region(handle, [x], offset=128)
    result = client.infer(
        "identity_fp32",
        [_shm_input("INPUT0", [2, 10], "FP32", "ident", n, 128)],
        outputs=[_shm_output("OUTPUT0", "ident", 1024, 1024)],
    )
    out = result.get_output("OUTPUT0")
    assert list(out.shape) == [2, 10]
    assert out.parameters["shared_memory_region"].string_param == "ident"
    assert out.parameters["shared_memory_byte_size"].int64_param == n
    assert out.parameters["shared_memory_offset"].int64_param == 1024
    assert len(result.get_response().raw_output_contents[0]) == 0  # no data on the wire
    got = shm.get_contents_as_numpy(handle, np.float32, [2, 10], offset=1024)
    np.testing.assert_array_equal(got, x)


def test_dense_tagger_matches_non_shm_and_onnxruntime(client, regions: Regions) -> None:
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((4, 20, 100)).astype(np.float32)
    mask = (rng.random((4, 1, 100)) > 0.3).astype(np.float32)
    handle_in, _ = regions.create("tagger_in", feats.nbytes + mask.nbytes)
    handle_out, _ = regions.create("tagger_out", 4 * 5 * 4)
    shm.set_shared_memory_region(handle_in, [feats, mask])
    client.infer(
        "dense_tagger",
        [
            _shm_input("pf_features", [4, 20, 100], "FP32", "tagger_in", feats.nbytes),
            _shm_input("pf_mask", [4, 1, 100], "FP32", "tagger_in", mask.nbytes, feats.nbytes),
        ],
        outputs=[_shm_output("softmax", "tagger_out", 80)],
    )
    via_shm = shm.get_contents_as_numpy(handle_out, np.float32, [4, 5]).copy()
    plain = client.infer(
        "dense_tagger", [_raw_input("pf_features", feats), _raw_input("pf_mask", mask)]
    ).as_numpy("softmax")
    session = ort.InferenceSession(
        str(SHIPPED / "dense_tagger" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (direct,) = session.run(["softmax"], {"pf_features": feats, "pf_mask": mask})
    np.testing.assert_array_equal(via_shm, plain)
    np.testing.assert_allclose(via_shm, direct, rtol=1e-5, atol=1e-7)


def test_mixed_shm_and_raw_tensors_keep_positions(client, regions: Regions) -> None:
    a = np.full((1, 16), 3.0, np.float32)
    b = np.arange(16, dtype=np.float32).reshape(1, 16)
    handle, _ = regions.create("mixed", 256)
    shm.set_shared_memory_region(handle, [a])
    result = client.infer(
        "add_sub",
        [_shm_input("INPUT0", [1, 16], "FP32", "mixed", 64), _raw_input("INPUT1", b)],
        outputs=[
            _shm_output("OUTPUT0", "mixed", 64, 64),
            grpcclient.InferRequestedOutput("OUTPUT1"),
        ],
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [1, 16], 64), a + b)


def test_bytes_tensors_in_shared_memory(client, regions: Regions) -> None:
    values = np.array([[b"jet", b""], [b"muon", "\u00e9t\u00e0".encode()]], dtype=object)
    serialized = serialize_byte_tensor(values)
    size = serialized_byte_size(serialized)
    handle, _ = regions.create("strings", 512)
    shm.set_shared_memory_region(handle, [serialized])
    result = client.infer(
        "identity_bytes",
        [_shm_input("INPUT0", [2, 2], "BYTES", "strings", size)],
        outputs=[_shm_output("OUTPUT0", "strings", 256, 256)],
    )
    written = result.get_output("OUTPUT0").parameters["shared_memory_byte_size"].int64_param
    assert written == size
    got = shm.get_contents_as_numpy(handle, np.object_, [2, 2], offset=256)
    np.testing.assert_array_equal(got, values)


def test_stream_infer_with_shared_memory(client, regions: Regions) -> None:
    x = np.ones((1, 5), np.float32)
    handle, _ = regions.create("streamed", 1024)
    shm.set_shared_memory_region(handle, [x])
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(3):
            client.async_stream_infer(
                "identity_fp32",
                [_shm_input("INPUT0", [1, 5], "FP32", "streamed", 20)],
                outputs=[_shm_output("OUTPUT0", "streamed", 20, 64 * (i + 1))],
            )
        for _ in range(3):
            _, error = results.get(timeout=30)
            assert error is None
    finally:
        client.stop_stream()
    for i in range(3):
        np.testing.assert_array_equal(
            shm.get_contents_as_numpy(handle, np.float32, [1, 5], 64 * (i + 1)), x
        )


# ---------------------------------------------------------------- control
def test_status_and_unregister(client, regions: Regions) -> None:
    _, key_a = regions.create("status_a", 64)
    _, key_b = regions.create("status_b", 128)
    status = client.get_system_shared_memory_status()
    assert {"status_a", "status_b"} <= set(status.regions)
    assert status.regions["status_a"].key == key_a
    assert status.regions["status_b"].byte_size == 128
    one = client.get_system_shared_memory_status("status_b")
    assert list(one.regions) == ["status_b"]
    assert one.regions["status_b"].key == key_b
    client.unregister_system_shared_memory("status_a")
    assert "status_a" not in client.get_system_shared_memory_status().regions
    client.unregister_system_shared_memory("status_a")  # unknown: a no-op, as in Triton
    client.unregister_system_shared_memory()
    assert len(client.get_system_shared_memory_status().regions) == 0
    with pytest.raises(InferenceServerException) as info:
        client.get_system_shared_memory_status("status_b")
    assert "NOT_FOUND" in _code(info.value)


def test_cuda_shared_memory_is_unimplemented_with_a_message(client) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64)
    assert "UNIMPLEMENTED" in _code(info.value)
    assert "CUDA shared memory is not supported" in info.value.message()


def _assert_fails(call, code: str, text: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert code in _code(info.value), info.value
    assert text in info.value.message(), info.value.message()


def test_bad_requests_are_refused_and_the_server_keeps_serving(client, regions) -> None:
    x = np.ones((1, 16), np.float32)
    handle, key = regions.create("bad", 64)
    shm.set_shared_memory_region(handle, [x])

    def infer(inp, out=None):
        return lambda: client.infer("identity_fp32", [inp], outputs=out)

    inp = _shm_input
    cases = [
        # offset + size past the region
        (infer(inp("INPUT0", [1, 16], "FP32", "bad", 64, 16)), "INVALID_ARGUMENT",
         "Invalid offset + byte size"),
        # byte size that does not match shape x datatype
        (infer(inp("INPUT0", [1, 16], "FP32", "bad", 60)), "INVALID_ARGUMENT",
         "shared_memory_byte_size is 60, expected 64"),
        # unknown region
        (infer(inp("INPUT0", [1, 16], "FP32", "nosuch", 64)), "NOT_FOUND",
         "Unable to find shared memory region: 'nosuch'"),
        # output region too small for the result
        (infer(inp("INPUT0", [1, 16], "FP32", "bad", 64), [_shm_output("OUTPUT0", "bad", 32)]),
         "INVALID_ARGUMENT", "should be at least 64 bytes"),
        # output window past the region
        (infer(inp("INPUT0", [1, 16], "FP32", "bad", 64), [_shm_output("OUTPUT0", "bad", 64, 8)]),
         "INVALID_ARGUMENT", "Invalid offset + byte size"),
        # double register
        (lambda: client.register_system_shared_memory("bad", key, 64), "ALREADY_EXISTS",
         "already in manager"),
        # shm object that does not exist
        (lambda: client.register_system_shared_memory("ghost", _key("ghost"), 64),
         "INVALID_ARGUMENT", "unable to open shared memory object"),
        # keys that are not shm names
        (lambda: client.register_system_shared_memory("evil", "/../etc/passwd", 64),
         "INVALID_ARGUMENT", "invalid shared memory key"),
        (lambda: client.register_system_shared_memory("evil", "/", 64),
         "INVALID_ARGUMENT", "invalid shared memory key"),
        # window past the shm object
        (lambda: client.register_system_shared_memory("big", key, 64, 8), "INVALID_ARGUMENT",
         "exceeds the size of shared memory object"),
        (lambda: client.register_system_shared_memory("empty", key, 0), "INVALID_ARGUMENT",
         "byte_size must be positive"),
    ]  # fmt: skip
    for call, code, text in cases:
        _assert_fails(call, code, text)
    # still serving, from shared memory and from the request
    result = client.infer(
        "identity_fp32",
        [_shm_input("INPUT0", [1, 16], "FP32", "bad", 64)],
        outputs=[_shm_output("OUTPUT0", "bad", 64)],
    )
    assert result.get_output("OUTPUT0").shape == [1, 16]
    assert client.infer("identity_fp32", [_raw_input("INPUT0", x)]).as_numpy("OUTPUT0").sum() == 16
    assert set(client.get_system_shared_memory_status().regions) == {"bad"}


def test_mapped_bytes_are_capped(client, regions: Regions) -> None:
    _, key = regions.create("huge", LIMIT + 4096, register=False)
    _assert_fails(
        lambda: client.register_system_shared_memory("huge", key, LIMIT + 4096),
        "RESOURCE_EXHAUSTED",
        "exceed the server's shared-memory limit",
    )
    assert "huge" not in client.get_system_shared_memory_status().regions


def test_unregister_during_a_request_does_not_unmap_under_it(
    server: EmbeddedServer, client, regions: Regions
) -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    handle, key = regions.create("inflight", 64)
    shm.set_shared_memory_region(handle, [x])
    me = os.getpid()
    assert _shm_maps(me, [key]) == 2  # the client's mapping and the server's (same process)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            client.infer,
            "sleepy",  # 100 ms per batch
            [_shm_input("x", [1, 4], "FP32", "inflight", 16)],
            outputs=[_shm_output("y", "inflight", 16, 32)],
        )
        batcher = server.server.core.models["sleepy"].versions[1].batcher
        deadline = time.monotonic() + 10
        while not batcher.in_flight:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        client.unregister_system_shared_memory("inflight")
        assert _shm_maps(me, [key]) == 2  # still mapped: the request holds views
        future.result(timeout=30)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [1, 4], 32), x * 2)
    deadline = time.monotonic() + 10
    while _shm_maps(me, [key]) != 1:  # released with the request's last view
        assert time.monotonic() < deadline, "the unregistered region stayed mapped"
        time.sleep(0.01)
    _assert_fails(
        lambda: client.infer("sleepy", [_shm_input("x", [1, 4], "FP32", "inflight", 16)]),
        "NOT_FOUND",
        "Unable to find shared memory region",
    )


# ---------------------------------------------------------------- file descriptors
def _shm_fds(pid: int, keys: list[str]) -> int:
    targets = {f"/dev/shm/{k.lstrip('/')}" for k in keys}
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if str(fd.readlink()) in targets:
                count += 1
        except OSError:
            continue
    return count


def _shm_maps(pid: int, keys: list[str]) -> int:
    text = Path(f"/proc/{pid}/maps").read_text()
    return sum(text.count(f"/dev/shm/{k.lstrip('/')}") for k in keys)


def test_unregister_unmaps_and_closes_in_the_server_process(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(SHIPPED / "identity_fp32", root / "identity_fp32")
    with ServerProcess(root, models=["identity_fp32"]) as proc:
        assert proc.proc is not None
        pid = proc.proc.pid
        client = grpcclient.InferenceServerClient(proc.grpc_url)
        regions = Regions(client)
        try:
            names = [f"fd{i}" for i in range(3)]
            keys = [regions.create(n, 4096)[1] for n in names]
            x = np.ones((1, 8), np.float32)
            shm.set_shared_memory_region(regions.handles[0], [x])
            client.infer(
                "identity_fp32",
                [_shm_input("INPUT0", [1, 8], "FP32", "fd0", 32)],
                outputs=[_shm_output("OUTPUT0", "fd1", 32)],
            )
            assert _shm_fds(pid, keys) == 3
            assert _shm_maps(pid, keys) == 3
            client.unregister_system_shared_memory("fd0")
            assert _shm_fds(pid, keys) == 2
            client.unregister_system_shared_memory()
            assert _shm_fds(pid, keys) == 0
            assert _shm_maps(pid, keys) == 0
        finally:
            regions.close()
            client.close()


# ---------------------------------------------------------------- the registry, transport-free
def test_registry_functions_for_any_transport(tmp_path: Path) -> None:
    registry = SharedMemoryRegistry(max_total_bytes=8192, allowed_key_prefixes=["sonic_"])
    with pytest.raises(PermissionDeniedError, match="not allowed"):
        registry.register("r", "/other_thing", 0, 16)
    key = "/sonic_" + _key("reg").lstrip("/")
    handle = shm.create_shared_memory_region("r", key, 8192)
    try:
        x = np.arange(6, dtype=np.int64).reshape(2, 3)
        shm.set_shared_memory_region(handle, [x], offset=4096 + 8)
        status = registry.register("r", key, 4096, 4096)  # an offset past a page boundary
        assert status.to_json() == {"name": "r", "key": key, "offset": 4096, "byte_size": 4096}
        with pytest.raises(AlreadyExistsError):
            registry.register("r", key, 0, 16)
        with pytest.raises(ResourceExhaustedError):
            registry.register("r2", key, 0, 8192)
        arr = read_input(registry, "x", "INT64", (2, 3), SharedMemoryRef("r", 48, 8))
        np.testing.assert_array_equal(arr, x)
        assert not arr.flags.writeable  # inputs are read-only views of the client's memory
        with pytest.raises(InvalidArgumentError, match="expected 48"):
            read_input(registry, "x", "INT64", (2, 3), SharedMemoryRef("r", 40, 8))
        target = output_target(registry, "y", SharedMemoryRef("r", 64, 1024))
        response = InferResponse("m", "1", [InferTensor("y", "INT64", (2, 3), x * 10)])
        write_outputs([RequestedOutput("y", {}, target)], response)
        assert in_shared_memory(response.outputs[0])
        got = shm.get_contents_as_numpy(handle, np.int64, [2, 3], offset=4096 + 1024)
        np.testing.assert_array_equal(got, x * 10)
        del target, arr
        registry.unregister()
        assert registry.mapped_bytes == 0
        with pytest.raises(NotFoundError):
            registry.view("r", 0, 1, writable=False)
    finally:
        shm.destroy_shared_memory_region(handle)

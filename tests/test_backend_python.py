"""Triton Python models (model.py + triton_python_backend_utils), served by a real server."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from pysonic.backends import BackendRequest, InstanceSpec, load_backend_class
from pysonic.errors import InternalError, ModelConfigError
from pysonic.repository import load_model_config
from pysonic.server import EmbeddedServer, ServerOptions

pytestmark = pytest.mark.timeout(120)

# A preprocessing model in the style of Triton's examples: config-driven dtypes, parameters,
# a sibling module imported relatively and absolutely, and the batch it was handed.
PREPROCESS = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from . import scaling
import helpers_abs


class TritonPythonModel:
    def initialize(self, args):
        self.args = args
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.scale = float(params["scale"])
        out = pb_utils.get_output_config_by_name(config, "OUTPUT0")
        self.dtype = pb_utils.triton_string_to_numpy(out["data_type"])
        self.model_dir = pb_utils.get_model_dir()

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            y = scaling.scale(x, self.scale) + helpers_abs.OFFSET
            n = np.full((x.shape[0], 1), len(requests), dtype=np.int32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", y.astype(self.dtype)),
                pb_utils.Tensor("REQUESTS_IN_EXECUTE", n),
            ]))
        return responses
"""

PREPROCESS_CONFIG = """
backend: "python"
max_batch_size: 16
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] },
        { name: "REQUESTS_IN_EXECUTE" data_type: TYPE_INT32 dims: [1] }]
dynamic_batching { max_queue_delay_microseconds: 200000 preferred_batch_size: [8] }
parameters { key: "scale" value { string_value: "3.0" } }
"""

# Per-request errors: a request whose input sums below zero is refused alone; a sum of exactly
# 1000 makes execute raise, which fails every request of that batch.
FAULTY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if x.sum() == 1000:
                raise pb_utils.TritonModelException("the model gave up on this batch")
            if x.sum() < 0:
                err = pb_utils.TritonError("negative input", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=err))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x * 2)]))
        return responses
"""

FAULTY_CONFIG = """
backend: "python"
max_batch_size: 16
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [2] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [2] }]
dynamic_batching { max_queue_delay_microseconds: 200000 preferred_batch_size: [4] }
"""

STRINGS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            words = request.inputs()[0].as_numpy()
            upper = np.array([w.decode().upper()[::-1] for w in words.reshape(-1)], dtype=object)
            lengths = np.array([len(w) for w in words.reshape(-1)], dtype=np.int64)
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("TEXT", upper.reshape(words.shape)),
                pb_utils.Tensor("LENGTH", lengths.reshape(words.shape)),
            ]))
        return out
"""

STRINGS_CONFIG = """
backend: "python"
max_batch_size: 0
input [{ name: "WORDS" data_type: TYPE_STRING dims: [-1] }]
output [{ name: "TEXT" data_type: TYPE_STRING dims: [-1] },
        { name: "LENGTH" data_type: TYPE_INT64 dims: [-1] }]
"""

# No config.pbtxt at all: auto_complete_config says everything; initialize/finalize leave marks.
LIFECYCLE = """
import json
from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [3]})
        config.add_output({"name": "Y", "data_type": "TYPE_INT32", "dims": [3]})
        config.set_max_batch_size(8)
        config.set_dynamic_batching()
        return config

    def initialize(self, args):
        self.marks = Path(pb_utils.get_model_dir()).parent
        (self.marks / f"initialized_{args['model_instance_name']}.json").write_text(
            json.dumps(args)
        )

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("Y", r.inputs()[0].as_numpy() + 1)])
            for r in requests
        ]

    def finalize(self):
        (self.marks / "finalized").write_text("yes")
"""


# Business Logic Scripting: a model that calls another model of the server, asynchronously.
BLS = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            target = "preprocess" if x.as_numpy().sum() >= 0 else "no_such_model"
            call = pb_utils.InferenceRequest(
                model_name=target,
                requested_output_names=["OUTPUT0"],
                inputs=[pb_utils.Tensor("INPUT0", x.as_numpy())],
            )
            answer = await call.async_exec()
            if answer.has_error():
                error = pb_utils.TritonError("BLS: " + answer.error().message())
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            out = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", out + 100)]))
        return responses
"""

BLS_CONFIG = PREPROCESS_CONFIG.replace(
    """,
        { name: "REQUESTS_IN_EXECUTE" data_type: TYPE_INT32 dims: [1] }""",
    "",
)


def write_python_model(repo: Path, name: str, code: str, config: str | None) -> Path:
    version = repo / name / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(textwrap.dedent(code))
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return version


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("pyrepo")
    version = write_python_model(repo, "preprocess", PREPROCESS, PREPROCESS_CONFIG)
    (version / "scaling.py").write_text("def scale(x, s):\n    return x * s\n")
    (version / "helpers_abs.py").write_text("OFFSET = 0.5\n")
    write_python_model(repo, "faulty", FAULTY, FAULTY_CONFIG)
    write_python_model(repo, "strings", STRINGS, STRINGS_CONFIG)
    write_python_model(repo, "lifecycle", LIFECYCLE, None)
    write_python_model(repo, "bls", BLS, BLS_CONFIG)
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[EmbeddedServer]:
    options = ServerOptions(
        model_repository=repo,
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=0,
        model_control_mode="explicit",
        load_models=["*"],
        drain_timeout=10,
    )
    with EmbeddedServer(options) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: EmbeddedServer) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def _input(name: str, arr: np.ndarray, datatype: str, module=grpcclient):
    i = module.InferInput(name, list(arr.shape), datatype)
    i.set_data_from_numpy(arr)
    return i


def test_preprocess_model_serves_triton_api(client) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = client.infer("preprocess", [_input("INPUT0", x, "FP32")])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), x * 3.0 + 0.5)
    assert result.as_numpy("REQUESTS_IN_EXECUTE").tolist() == [[1], [1]]


async def test_execute_receives_the_batch_as_separate_requests(server: EmbeddedServer) -> None:
    async with aioclient.InferenceServerClient(server.grpc_url) as c:
        xs = [np.full((1 + i % 2, 4), i, dtype=np.float32) for i in range(8)]

        async def one(x: np.ndarray):
            return await c.infer("preprocess", [_input("INPUT0", x, "FP32", aioclient)])

        results = await asyncio.gather(*(one(x) for x in xs))
    for x, r in zip(xs, results, strict=True):
        np.testing.assert_allclose(r.as_numpy("OUTPUT0"), x * 3.0 + 0.5)  # own rows, in order
        assert r.as_numpy("OUTPUT0").shape == x.shape
    # 12 rows queued within the delay: at least one execute call got several requests, each
    # as its own InferenceRequest (not one concatenated request).
    counts = [int(r.as_numpy("REQUESTS_IN_EXECUTE")[0, 0]) for r in results]
    assert max(counts) > 1


async def test_per_request_errors_fail_only_their_request(server: EmbeddedServer) -> None:
    async with aioclient.InferenceServerClient(server.grpc_url) as c:

        async def one(x: np.ndarray):
            try:
                r = await c.infer("faulty", [_input("INPUT0", x, "FP32", aioclient)])
            except InferenceServerException as err:
                return err
            return r.as_numpy("OUTPUT0")

        good = np.ones((1, 2), np.float32)
        bad = -np.ones((1, 2), np.float32)
        results = await asyncio.gather(one(good), one(bad), one(good * 3), one(bad))
        assert isinstance(results[1], InferenceServerException)
        assert results[1].status() == "StatusCode.INVALID_ARGUMENT"
        assert "negative input" in results[1].message()
        assert isinstance(results[3], InferenceServerException)
        np.testing.assert_allclose(results[0], good * 2)
        np.testing.assert_allclose(results[2], good * 6)

        # execute raising fails the whole batch it was handed (the requests batched with it)
        boom = np.full((1, 2), 500, np.float32)
        results = await asyncio.gather(one(boom), one(good), one(good), one(good))
        assert all(isinstance(r, InferenceServerException) for r in results)
        assert results[0].status() == "StatusCode.INTERNAL"
        assert "the model gave up on this batch" in results[0].message()
        stats = await c.get_inference_statistics("faulty")
        inference = stats.model_stats[0].inference_stats
        assert inference.fail.count == 6
        assert inference.success.count == 2


def test_bytes_in_and_out(client) -> None:
    words = np.array([b"jet", b"muon", "électron".encode()], dtype=object)
    result = client.infer("strings", [_input("WORDS", words, "BYTES")])
    assert result.as_numpy("TEXT").tolist() == [b"TEJ", b"NOUM", "NORTCELÉ".encode()]
    assert result.as_numpy("LENGTH").tolist() == [3, 4, len("électron".encode())]


def test_auto_complete_initialize_and_finalize(client, repo: Path) -> None:
    config = client.get_model_config("lifecycle").config
    assert config.backend == "python"
    assert config.max_batch_size == 8
    assert [(i.name, list(i.dims)) for i in config.input] == [("X", [3])]
    assert config.HasField("dynamic_batching")
    x = np.array([[1, 2, 3]], dtype=np.int32)
    np.testing.assert_array_equal(
        client.infer("lifecycle", [_input("X", x, "INT32")]).as_numpy("Y"), x + 1
    )
    [marker] = (repo / "lifecycle").glob("initialized_*.json")
    args = json.loads(marker.read_text())
    assert marker.name == "initialized_lifecycle_0.json"  # group "lifecycle", instance 0
    assert args["model_name"] == "lifecycle"
    assert args["model_version"] == "1"
    assert args["model_instance_kind"] == "CPU"
    assert args["model_instance_device_id"] == "0"
    assert args["model_repository"] == str(repo / "lifecycle")
    model_config = json.loads(args["model_config"])
    assert model_config["input"][0]["dims"] == [3]  # numbers, as Triton gives them
    assert model_config["max_batch_size"] == 8
    assert not (repo / "lifecycle" / "finalized").exists()
    client.unload_model("lifecycle")
    assert (repo / "lifecycle" / "finalized").read_text() == "yes"
    client.load_model("lifecycle")
    assert client.is_model_ready("lifecycle")


def test_business_logic_scripting(client) -> None:
    x = np.ones((2, 4), np.float32)
    result = client.infer("bls", [_input("INPUT0", x, "FP32")])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), x * 3.0 + 0.5 + 100)
    with pytest.raises(InferenceServerException, match="BLS: unknown model 'no_such_model'"):
        client.infer("bls", [_input("INPUT0", -x, "FP32")])


def _spec(repo: Path, name: str) -> InstanceSpec:
    config = load_model_config(repo / name)
    return InstanceSpec(name, 1, repo / name / "1", config)


def test_backend_used_directly(repo: Path) -> None:
    backend = load_backend_class("python")(_spec(repo, "faulty"))
    try:
        ok, refused = backend.execute_requests(
            [
                BackendRequest({"INPUT0": np.ones((1, 2), np.float32)}),
                BackendRequest({"INPUT0": -np.ones((1, 2), np.float32)}),
            ]
        )
        np.testing.assert_array_equal(ok["OUTPUT0"], [[2.0, 2.0]])
        assert isinstance(refused, Exception)
        assert "negative input" in str(refused)
        with pytest.raises(InternalError, match="gave up"):
            backend.execute({"INPUT0": np.full((1, 2), 500, np.float32)})
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        ("class Nope:\n    pass\n", "defines no class TritonPythonModel"),
        ("import not_a_module_anywhere\n", "importing"),
        (
            "class TritonPythonModel:\n"
            "    def initialize(self, args):\n"
            "        raise ValueError('bad')\n",
            "initialize failed: ValueError: bad",
        ),
    ],
)
def test_load_errors_are_clear(tmp_path: Path, code: str, fragment: str) -> None:
    write_python_model(tmp_path, "broken", code, FAULTY_CONFIG.replace("faulty", "broken"))
    with pytest.raises(ModelConfigError, match=fragment):
        load_backend_class("python")(_spec(tmp_path, "broken"))


def test_wrong_output_dtype_is_an_error_for_that_request(tmp_path: Path) -> None:
    code = FAULTY.replace("x = pb_utils", "x = np.float64(1) * pb_utils")  # float64 outputs
    write_python_model(tmp_path, "wrong", code, FAULTY_CONFIG)
    backend = load_backend_class("python")(_spec(tmp_path, "wrong"))
    try:
        [result] = backend.execute_requests([BackendRequest({"INPUT0": np.ones((1, 2), "f4")})])
        assert isinstance(result, InternalError)
        assert "dtype float64 but the config says TYPE_FP32" in result.message
    finally:
        backend.close()


def test_pb_utils_tensors_types_and_dlpack() -> None:
    from pysonic.backends.python import pb_utils

    words = np.array([b"a", b"bc"], dtype=object)
    assert pb_utils.deserialize_bytes_tensor(pb_utils.serialize_byte_tensor(words)).tolist() == [
        b"a",
        b"bc",
    ]
    assert pb_utils.triton_string_to_numpy("TYPE_FP16") is np.float16
    assert pb_utils.numpy_to_triton_type(np.float32) == 11
    assert pb_utils.triton_to_numpy_type(13) is np.object_
    read_only = np.frombuffer(np.arange(6, dtype=np.float32).tobytes(), np.float32).reshape(2, 3)
    tensor = pb_utils.Tensor("x", read_only)
    assert (tensor.shape(), tensor.triton_dtype(), tensor.is_cpu()) == ([2, 3], 11, True)
    torch = pytest.importorskip("torch")
    as_torch = torch.from_dlpack(tensor.to_dlpack())  # a copy: the request bytes are read-only
    np.testing.assert_array_equal(as_torch.numpy(), read_only)
    back = pb_utils.Tensor.from_dlpack("y", torch.arange(4, dtype=torch.int64))
    assert back.as_numpy().tolist() == [0, 1, 2, 3]
    capsule = torch.utils.dlpack.to_dlpack(torch.ones(3))
    assert pb_utils.Tensor.from_dlpack("z", capsule).as_numpy().tolist() == [1.0, 1.0, 1.0]

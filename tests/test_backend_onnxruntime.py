"""OrtBackend: outputs match a direct onnxruntime session, dtypes, providers, parameters, errors."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2

from pysonic.backends import load_backend_class
from pysonic.backends.base import InstanceSpec
from pysonic.backends.onnxruntime import OrtBackend
from pysonic.errors import InternalError, InvalidArgumentError, ModelConfigError


def _save(tmp_path: Path, nodes: list, inputs: list, outputs: list, inits: list = ()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    (tmp_path / "1").mkdir(exist_ok=True)
    onnx.save(model, tmp_path / "1" / "model.onnx")
    return tmp_path / "1"


def _dense(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3)).astype("f4"), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Softmax", ["h"], ["probs"], axis=-1),
        helper.make_node("Relu", ["x"], ["relu"]),
    ]
    return _save(
        tmp_path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["N", 8]),
        ],
        [w],
    )


def _identity(tmp_path: Path, elem: int) -> Path:
    return _save(
        tmp_path,
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        [helper.make_tensor_value_info("INPUT0", elem, ["N", 2])],
        [helper.make_tensor_value_info("OUTPUT0", elem, ["N", 2])],
    )


def _spec(path: Path, config: str = "", **kwargs: object) -> InstanceSpec:
    proto = text_format.Parse(
        f'name: "m" backend: "onnxruntime" {config}', model_config_pb2.ModelConfig()
    )
    return InstanceSpec(model_name="m", version=1, version_path=path, config=proto, **kwargs)


def _param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}'


def test_registry_resolves_onnxruntime() -> None:
    assert load_backend_class("onnxruntime") is OrtBackend


@pytest.mark.parametrize("batch", [1, 3, 16, 64])
def test_outputs_match_direct_session(tmp_path: Path, batch: int) -> None:
    path = _dense(tmp_path)
    backend = OrtBackend(_spec(path))
    x = np.random.default_rng(batch).standard_normal((batch, 8)).astype("f4")
    expected = ort.InferenceSession(path / "model.onnx", providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    out = backend.execute({"x": x})
    assert set(out) == {"probs", "relu"}
    np.testing.assert_array_equal(out["probs"], expected[0])
    np.testing.assert_array_equal(out["relu"], expected[1])
    assert backend.providers == ["CPUExecutionProvider"]
    backend.close()


def test_read_only_and_strided_inputs(tmp_path: Path) -> None:
    backend = OrtBackend(_spec(_dense(tmp_path)))
    x = np.arange(4 * 8, dtype="f4").reshape(4, 8) - 10
    raw = x.tobytes()
    view = np.frombuffer(raw, dtype="f4").reshape(4, 8)
    assert not view.flags.writeable
    np.testing.assert_array_equal(backend.execute({"x": view})["relu"], np.maximum(x, 0))
    # Non-contiguous (every other row): made contiguous once, still correct.
    np.testing.assert_array_equal(backend.execute({"x": x[::2]})["relu"], np.maximum(x[::2], 0))


def test_bytes_round_trip(tmp_path: Path) -> None:
    backend = OrtBackend(_spec(_identity(tmp_path, TensorProto.STRING)))
    data = np.array([[b"abc", b""], ["\u00e9t\u00e9".encode(), b"x" * 1000]], dtype=object)
    out = backend.execute({"INPUT0": data})["OUTPUT0"]
    assert out.dtype == object
    assert out.shape == (2, 2)
    assert out.tolist() == data.tolist()
    assert all(type(v) is bytes for v in out.reshape(-1))


def test_bytes_not_utf8_is_invalid_argument(tmp_path: Path) -> None:
    backend = OrtBackend(_spec(_identity(tmp_path, TensorProto.STRING)))
    with pytest.raises(InvalidArgumentError, match="UTF-8"):
        backend.execute({"INPUT0": np.array([[b"\xff", b"a"]], dtype=object)})


def test_fp16(tmp_path: Path) -> None:
    backend = OrtBackend(_spec(_identity(tmp_path, TensorProto.FLOAT16)))
    x = np.frombuffer(np.array([[1.5, -2], [3, 65504]], "f2").tobytes(), "f2").reshape(2, 2)
    out = backend.execute({"INPUT0": x})["OUTPUT0"]
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, x)


def test_bf16(tmp_path: Path) -> None:
    bf16 = np.dtype(ml_dtypes.bfloat16)
    backend = OrtBackend(_spec(_identity(tmp_path, TensorProto.BFLOAT16)))
    x = np.array([[1.5, -2], [3, 1e30]], "f4").astype(bf16)
    out = backend.execute({"INPUT0": np.frombuffer(x.tobytes(), bf16).reshape(2, 2)})["OUTPUT0"]
    assert out.dtype == bf16
    np.testing.assert_array_equal(out.view(np.uint16), x.view(np.uint16))


def test_unknown_and_missing_inputs(tmp_path: Path) -> None:
    backend = OrtBackend(_spec(_dense(tmp_path)))
    x = np.zeros((1, 8), "f4")
    with pytest.raises(InvalidArgumentError, match=r"unknown inputs \['y'\]"):
        backend.execute({"x": x, "y": x})
    with pytest.raises(InvalidArgumentError, match=r"missing inputs \['x'\]"):
        backend.execute({})


def test_runtime_failure_is_internal_error(tmp_path: Path) -> None:
    backend = OrtBackend(_spec(_dense(tmp_path)))
    with pytest.raises(InternalError, match="onnxruntime failed") as info:
        backend.execute({"x": np.zeros((1, 5), "f4")})
    assert info.value.__cause__ is not None


def test_closed_backend_is_internal_error(tmp_path: Path) -> None:
    backend = OrtBackend(_spec(_dense(tmp_path)))
    backend.close()
    with pytest.raises(InternalError, match="closed"):
        backend.execute({"x": np.zeros((1, 8), "f4")})


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="no model file"):
        OrtBackend(_spec(tmp_path))
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelConfigError, match="cannot load"):
        OrtBackend(_spec(tmp_path))


def test_default_model_filename(tmp_path: Path) -> None:
    path = _dense(tmp_path)
    (path / "model.onnx").rename(path / "tagger.onnx")
    backend = OrtBackend(_spec(path, 'default_model_filename: "tagger.onnx"'))
    assert backend.execute({"x": np.ones((2, 8), "f4")})["probs"].shape == (2, 3)


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        (_param("execution_provider", "NoSuchExecutionProvider"), "KIND_CPU"),
        ("", "KIND_GPU"),
        (
            "optimization { execution_accelerators { "
            'cpu_execution_accelerator: [{ name: "openvino" }] } }',
            "KIND_CPU",
        ),
        (
            "optimization { execution_accelerators { "
            'gpu_execution_accelerator: [{ name: "tensorrt" }] } }',
            "KIND_GPU",
        ),
    ],
)
def test_unavailable_provider_is_config_error(tmp_path: Path, config: str, kind: str) -> None:
    available = ort.get_available_providers()
    if kind == "KIND_GPU" and "CUDAExecutionProvider" in available:
        pytest.skip("this onnxruntime build has CUDA")
    with pytest.raises(ModelConfigError, match="lacks") as info:
        OrtBackend(_spec(_dense(tmp_path), config, kind=kind))
    assert "CPUExecutionProvider" in str(info.value)  # lists what is available


def test_unknown_accelerator(tmp_path: Path) -> None:
    config = 'optimization { execution_accelerators { cpu_execution_accelerator: [{name: "x"}] } }'
    with pytest.raises(ModelConfigError, match="unknown execution accelerator"):
        OrtBackend(_spec(_dense(tmp_path), config))


def test_explicit_cpu_provider(tmp_path: Path) -> None:
    spec = _spec(_dense(tmp_path), _param("execution_provider", "CPUExecutionProvider"))
    assert OrtBackend(spec).providers == ["CPUExecutionProvider"]


def _options(backend: OrtBackend) -> ort.SessionOptions:
    return backend._live().get_session_options()


def test_thread_defaults_share_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pysonic.backends.onnxruntime._available_cores", lambda: 8)
    path = _dense(tmp_path)
    assert _options(OrtBackend(_spec(path, instance_count=3))).intra_op_num_threads == 2
    assert _options(OrtBackend(_spec(path, instance_count=16))).intra_op_num_threads == 1
    opts = _options(OrtBackend(_spec(path)))
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (8, 1)
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_thread_and_session_parameters(tmp_path: Path) -> None:
    config = " ".join(
        [
            _param("intra_op_thread_count", "3"),
            _param("inter_op_thread_count", "2"),
            _param("execution_mode", "1"),
            _param("graph_optimization_level", "disable"),
            _param("enable_mem_arena", "false"),
            _param("session_config.session.intra_op.allow_spinning", "0"),
        ]
    )
    backend = OrtBackend(_spec(_dense(tmp_path), config))
    opts = _options(backend)
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 2)
    assert opts.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert not opts.enable_cpu_mem_arena
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert backend.execute({"x": np.ones((2, 8), "f4")})["probs"].shape == (2, 3)


@pytest.mark.parametrize(
    ("level", "expected"),
    [(-1, "ORT_ENABLE_BASIC"), (0, "ORT_ENABLE_ALL"), (1, "ORT_ENABLE_EXTENDED")],
)
def test_triton_graph_level(tmp_path: Path, level: int, expected: str) -> None:
    backend = OrtBackend(_spec(_dense(tmp_path), f"optimization {{ graph {{ level: {level} }} }}"))
    assert _options(backend).graph_optimization_level.name == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("intra_op_thread_count", "-1"),
        ("inter_op_thread_count", "two"),
        ("execution_mode", "2"),
        ("graph_optimization_level", "max"),
        ("enable_mem_arena", "yes?"),
    ],
)
def test_bad_parameters(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ModelConfigError, match=key):
        OrtBackend(_spec(_dense(tmp_path), _param(key, value)))


def _generator() -> types.ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "make_dense_model.py"
    spec = importlib.util.spec_from_file_location("make_dense_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_dense_tagger(tmp_path: Path) -> None:
    gen = _generator()
    repo = Path(gen.__file__).resolve().parents[1] / "model_repository"
    shipped = (repo / "dense_tagger" / "1" / "model.onnx").read_bytes()
    rebuilt = gen.dense_tagger().SerializeToString(deterministic=True)
    assert rebuilt == shipped, "run: python benchmarks/make_dense_model.py"
    assert len(shipped) < 2 * 1024 * 1024
    config = text_format.Parse(
        (repo / "dense_tagger" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.max_batch_size == 64
    spec = InstanceSpec("dense_tagger", 1, repo / "dense_tagger" / "1", config)
    backend = OrtBackend(spec)
    feed = gen.example_inputs(16)
    probs = backend.execute(feed)["softmax"]
    assert probs.shape == (16, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    # Padded particles (mask 0) do not change the answer, whatever their features hold.
    noisy = feed["pf_features"] + 100 * (1 - feed["pf_mask"])
    noisy_probs = backend.execute({"pf_features": noisy, "pf_mask": feed["pf_mask"]})["softmax"]
    np.testing.assert_allclose(noisy_probs, probs, rtol=1e-4, atol=1e-6)


def test_shipped_identity_fp32() -> None:
    gen = _generator()
    repo = Path(gen.__file__).resolve().parents[1] / "model_repository"
    config = text_format.Parse(
        (repo / "identity_fp32" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    backend = OrtBackend(InstanceSpec("identity_fp32", 1, repo / "identity_fp32" / "1", config))
    x = np.arange(12, dtype="f4").reshape(3, 4)
    np.testing.assert_array_equal(backend.execute({"INPUT0": x})["OUTPUT0"], x)


def test_gpu_provider_list_follows_triton(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KIND_GPU + tensorrt accelerator -> [TensorRT, CUDA, CPU] on the instance's device."""
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    config = (
        "optimization { execution_accelerators { gpu_execution_accelerator: ["
        '{ name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } },'
        '{ name: "cuda" parameters { key: "cudnn_conv_use_max_workspace" value: "1" } }] } } '
        + _param("gpu_mem_limit", "1000")
    )
    backend = OrtBackend.__new__(OrtBackend)  # only the provider choice, no session
    backend.spec = _spec(tmp_path, config, kind="KIND_GPU", device_id=3)
    backend._params = {k: v.string_value for k, v in backend.spec.config.parameters.items()}
    assert backend._providers() == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": True, "device_id": 3}),
        (
            "CUDAExecutionProvider",
            {"gpu_mem_limit": "1000", "cudnn_conv_use_max_workspace": "1", "device_id": 3},
        ),
        ("CPUExecutionProvider", {}),
    ]

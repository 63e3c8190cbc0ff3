"""Ensembles (platform "ensemble"): a Python preprocessing step feeding a shipped ONNX model."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from pysonic.server import EmbeddedServer, ServerOptions

pytestmark = pytest.mark.timeout(120)

SHIPPED = Path(__file__).resolve().parents[1] / "model_repository"

SCALE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if np.isnan(x).any():
                error = pb_utils.TritonError("NaN input", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                y = (x * 2 + 1).astype(np.float32)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", y)]))
        return responses
"""

TOTAL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(
                "SUM", r.inputs()[0].as_numpy().sum(axis=1, keepdims=True).astype(np.float32)
            )])
            for r in requests
        ]
"""


def python_config(name: str, inp: str, out: str, out_dims: str = "[-1]") -> str:
    return f"""
name: "{name}"
backend: "python"
max_batch_size: 64
input [{{ name: "{inp}" data_type: TYPE_FP32 dims: [-1] }}]
output [{{ name: "{out}" data_type: TYPE_FP32 dims: {out_dims} }}]
dynamic_batching {{ max_queue_delay_microseconds: 1000 }}
"""


# Two branches from RAW: scale -> identity_fp32 (ONNX) gives RESULT; total gives TOTAL.
PIPELINE = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 64
input [{ name: "RAW" data_type: TYPE_FP32 dims: [-1] }]
output [{ name: "RESULT" data_type: TYPE_FP32 dims: [-1] },
        { name: "TOTAL" data_type: TYPE_FP32 dims: [1] }]
ensemble_scheduling { step [
  { model_name: "scale" model_version: -1
    input_map { key: "INPUT0" value: "RAW" } output_map { key: "OUTPUT0" value: "scaled" } },
  { model_name: "identity_fp32" model_version: 1
    input_map { key: "INPUT0" value: "scaled" } output_map { key: "OUTPUT0" value: "RESULT" } },
  { model_name: "total" model_version: -1
    input_map { key: "INPUT0" value: "RAW" } output_map { key: "SUM" value: "TOTAL" } }
] }
"""


def write_model(repo: Path, name: str, config: str, code: str | None = None) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    if code is not None:
        (repo / name / "1" / "model.py").write_text(textwrap.dedent(code))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("ensrepo")
    shutil.copytree(SHIPPED / "identity_fp32", repo / "identity_fp32")
    write_model(repo, "scale", python_config("scale", "INPUT0", "OUTPUT0"), SCALE)
    write_model(repo, "total", python_config("total", "INPUT0", "SUM", "[1]"), TOTAL)
    write_model(repo, "pipeline", PIPELINE)
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[EmbeddedServer]:
    options = ServerOptions(
        model_repository=repo,
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=0,
        model_control_mode="explicit",
        load_models=["pipeline"],  # its composing models are loaded with it, as in Triton
        drain_timeout=10,
    )
    with EmbeddedServer(options) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: EmbeddedServer) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def _infer(client, model: str, name: str, x: np.ndarray, outputs: list[str] | None = None):
    i = grpcclient.InferInput(name, list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    requested = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer(model, [i], outputs=requested)


def test_composing_models_are_loaded_with_the_ensemble(client) -> None:
    for name in ("pipeline", "scale", "total", "identity_fp32"):
        assert client.is_model_ready(name), name


def test_ensemble_equals_its_steps_called_directly(client) -> None:
    x = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    result = _infer(client, "pipeline", "RAW", x)
    scaled = _infer(client, "scale", "INPUT0", x).as_numpy("OUTPUT0")
    direct = _infer(client, "identity_fp32", "INPUT0", scaled).as_numpy("OUTPUT0")
    total = _infer(client, "total", "INPUT0", x).as_numpy("SUM")
    np.testing.assert_array_equal(result.as_numpy("RESULT"), direct)
    np.testing.assert_array_equal(result.as_numpy("TOTAL"), total)
    np.testing.assert_allclose(direct, x * 2 + 1, rtol=1e-6)
    only = _infer(client, "pipeline", "RAW", x, ["TOTAL"])
    assert only.as_numpy("RESULT") is None
    np.testing.assert_array_equal(only.as_numpy("TOTAL"), total)


def test_ensemble_metadata_config_and_statistics(client) -> None:
    meta = client.get_model_metadata("pipeline")
    assert meta.platform == "ensemble"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("RAW", "FP32", [-1, -1])]
    assert [t.name for t in meta.outputs] == ["RESULT", "TOTAL"]
    config = client.get_model_config("pipeline").config
    assert [s.model_name for s in config.ensemble_scheduling.step] == [
        "scale",
        "identity_fp32",
        "total",
    ]
    assert not config.instance_group
    before = client.get_inference_statistics("pipeline").model_stats[0]
    _infer(client, "pipeline", "RAW", np.ones((2, 3), np.float32))
    after = client.get_inference_statistics("pipeline").model_stats[0]
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_count == before.inference_count + 2
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert after.inference_stats.queue.count == after.inference_stats.success.count


def test_failing_step_fails_the_ensemble_request(client) -> None:
    x = np.array([[1.0, np.nan]], dtype=np.float32)
    with pytest.raises(InferenceServerException) as info:
        _infer(client, "pipeline", "RAW", x)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "ensemble 'pipeline' step 0 (model 'scale') failed: NaN input" in info.value.message()
    stats = client.get_inference_statistics("pipeline").model_stats[0]
    assert stats.inference_stats.fail.count >= 1
    # the server goes on serving
    assert (
        _infer(client, "pipeline", "RAW", np.ones((1, 2), np.float32)).as_numpy("RESULT")
        is not None
    )


def _ensemble(
    name: str, steps: str, *, inputs: str = "", outputs: str = "", extra: str = ""
) -> str:
    inputs = inputs or '{ name: "RAW" data_type: TYPE_FP32 dims: [-1] }'
    outputs = outputs or '{ name: "OUT" data_type: TYPE_FP32 dims: [-1] }'
    return f"""
name: "{name}"
platform: "ensemble"
max_batch_size: 8
input [{inputs}]
output [{outputs}]
ensemble_scheduling {{ step [{steps}] }}
{extra}
"""


def _step(model: str, inp: str, src: str, out: str, dst: str) -> str:
    return (
        f'{{ model_name: "{model}" model_version: -1 input_map {{ key: "{inp}" value: "{src}" }}'
        f' output_map {{ key: "{out}" value: "{dst}" }} }}'
    )


BROKEN = {
    "unknown_model": (
        _ensemble("unknown_model", _step("nope", "INPUT0", "RAW", "OUTPUT0", "OUT")),
        "composing model 'nope' cannot be loaded: unknown model 'nope'",
    ),
    "bad_input_key": (
        _ensemble("bad_input_key", _step("scale", "INPUT9", "RAW", "OUTPUT0", "OUT")),
        "input_map key 'INPUT9' is not a tensor of the model (INPUT0)",
    ),
    "unconnected": (
        _ensemble("unconnected", _step("scale", "INPUT0", "ghost", "OUTPUT0", "OUT")),
        "reads tensor 'ghost', which no step produces and which is not an ensemble input",
    ),
    "wrong_dtype": (
        _ensemble(
            "wrong_dtype",
            _step("scale", "INPUT0", "RAW", "OUTPUT0", "OUT"),
            inputs='{ name: "RAW" data_type: TYPE_INT32 dims: [-1] }',
        ),
        "tensor 'RAW' is INT32 (from the ensemble input) but FP32 is expected",
    ),
    "wrong_shape": (
        _ensemble(
            "wrong_shape",
            _step("total", "INPUT0", "RAW", "SUM", "OUT"),
            outputs='{ name: "OUT" data_type: TYPE_FP32 dims: [2] }',
        ),
        "tensor 'OUT' has shape [-1, 1] (from ensemble 'wrong_shape' step 0 (model 'total'))",
    ),
    "unproduced_output": (
        _ensemble("unproduced_output", _step("scale", "INPUT0", "RAW", "OUTPUT0", "mid")),
        "output 'OUT' reads tensor 'OUT', which no step produces",
    ),
    "step_cycle": (
        _ensemble(
            "step_cycle",
            _step("scale", "INPUT0", "b", "OUTPUT0", "a")
            + ","
            + _step("identity_fp32", "INPUT0", "a", "OUTPUT0", "b")
            + ","
            + _step("total", "INPUT0", "RAW", "SUM", "OUT"),
            outputs='{ name: "OUT" data_type: TYPE_FP32 dims: [1] }',
        ),
        "steps [0, 1] depend on each other's outputs (a cycle)",
    ),
    "ens_a": (
        _ensemble("ens_a", _step("ens_b", "RAW", "RAW", "OUT", "OUT")),
        "ensembles ens_a -> ens_b -> ens_a contain each other (a cycle)",
    ),
    "too_big": (
        _ensemble("too_big", _step("scale", "INPUT0", "RAW", "OUTPUT0", "OUT")).replace(
            "max_batch_size: 8", "max_batch_size: 128"
        ),
        "the ensemble allows batches of 128 but model 'scale' allows max_batch_size 64",
    ),
    "with_instances": (
        _ensemble(
            "with_instances",
            _step("scale", "INPUT0", "RAW", "OUTPUT0", "OUT"),
            extra="instance_group [{ count: 2 }]",
        ),
        "an ensemble cannot have instance_group",
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_invalid_ensembles_fail_to_load_clearly(client, repo: Path, name: str) -> None:
    config, fragment = BROKEN[name]
    write_model(repo, name, config)
    if name == "ens_a":
        write_model(repo, "ens_b", _ensemble("ens_b", _step("ens_a", "RAW", "RAW", "OUT", "OUT")))
    with pytest.raises(InferenceServerException) as info:
        client.load_model(name)
    assert fragment in info.value.message()
    assert not client.is_model_ready(name)
    assert client.is_model_ready("pipeline")

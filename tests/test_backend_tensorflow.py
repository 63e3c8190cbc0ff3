"""The TensorFlow backend: a SavedModel written here, served for real (skipped without TF).

TensorFlow is the optional ``pysonic[tensorflow]`` extra and is not in the test environment (it
is over 1 GB); install it to run these tests."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from pysonic.server import EmbeddedServer, ServerOptions

pytestmark = pytest.mark.timeout(180)

CONFIG = """
name: "scaler"
platform: "tensorflow_savedmodel"
max_batch_size: 16
input [{ name: "x" data_type: TYPE_FP32 dims: [4] },
       { name: "label" data_type: TYPE_STRING dims: [1] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [4] },
        { name: "tag" data_type: TYPE_STRING dims: [1] }]
dynamic_batching { }
"""


def test_missing_tensorflow_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "scaler" / "1" / "model.savedmodel").mkdir(parents=True)
    (tmp_path / "scaler" / "config.pbtxt").write_text(CONFIG)
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["tensorflow"] = None  # as if TensorFlow were not installed
        from pathlib import Path
        from pysonic.backends import InstanceSpec, load_backend_class
        from pysonic.errors import ModelConfigError
        from pysonic.repository import load_model_config
        path = Path({str(tmp_path / "scaler")!r})
        spec = InstanceSpec("scaler", 1, path / "1", load_model_config(path))
        try:
            load_backend_class("tensorflow")(spec)
        except ModelConfigError as err:
            print(err)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'pysonic[tensorflow]'" in out.stdout


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip(
        "tensorflow", reason="TensorFlow is not installed (pip install 'pysonic[tensorflow]')"
    )


@pytest.fixture(scope="module")
def server(tf, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    repo = tmp_path_factory.mktemp("tfrepo")

    class Scaler(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 4], tf.float32, name="x"),
                tf.TensorSpec([None, 1], tf.string, name="label"),
            ]
        )
        def serve(self, x, label):
            return {"y": x * 3.0 - 1.0, "tag": tf.strings.upper(label)}

    module = Scaler()
    path = repo / "scaler" / "1" / "model.savedmodel"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    (repo / "scaler" / "config.pbtxt").write_text(CONFIG)
    options = ServerOptions(model_repository=repo, host="127.0.0.1", grpc_port=0, metrics_port=0)
    with EmbeddedServer(options) as srv:
        yield srv


def test_savedmodel_served(server: EmbeddedServer) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    label = np.array([[b"top"], [b"qcd"]], dtype=object)
    inputs = [
        grpcclient.InferInput("x", [2, 4], "FP32"),
        grpcclient.InferInput("label", [2, 1], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(label)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = client.infer("scaler", inputs)
        assert client.get_model_metadata("scaler").platform == "tensorflow_savedmodel"
    np.testing.assert_allclose(result.as_numpy("y"), x * 3.0 - 1.0)
    assert result.as_numpy("tag").tolist() == [[b"TOP"], [b"QCD"]]

"""A third-party backend found through its ``pysonic.backends`` entry point and served for real.

The example plugin in ``examples/custom_backend`` is not installed into the test environment
(tests install nothing). Instead the test lays out what ``pip install`` would: a ``.dist-info``
directory whose ``entry_points.txt`` is generated from the plugin's own pyproject.toml, on the
``sys.path`` of a ``pysonic serve`` subprocess, next to the plugin's source. importlib.metadata
finds distributions exactly that way, so the registry sees the plugin as if it were installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from pysonic.server import ServerProcess

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.timeout(180)

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "custom_backend"
CONFIG = """
backend: "vendor_accel"
max_batch_size: 64
input [{ name: "x" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "scores" data_type: TYPE_FP32 dims: [4] }]
instance_group [{ kind: KIND_GPU count: 1 gpus: [0, 1] }]
dynamic_batching { }
parameters { key: "clock_mhz" value { string_value: "300" } }
"""


def fake_install(site: Path) -> str:
    """A dist-info as pip would write it for the plugin; returns the PYTHONPATH to use."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    dist = site / f"pysonic_vendor_accel-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    paths = [os.environ.get("PYTHONPATH", ""), str(site), str(PLUGIN / "src")]
    return os.pathsep.join(p for p in paths if p)


def test_entry_point_is_found(tmp_path: Path) -> None:
    code = (
        "from pysonic.backends import available_backends, load_backend_class;"
        "print(available_backends()['vendor_accel']);"
        "print(load_backend_class('vendor_accel').__name__)"
    )
    env = {**os.environ, "PYTHONPATH": fake_install(tmp_path / "site")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["pysonic_vendor_accel:VendorAccelBackend", "VendorAccelBackend"]


def test_plugin_serves_a_model(tmp_path: Path) -> None:
    sys.path.insert(0, str(PLUGIN / "src"))
    try:
        from pysonic_vendor_accel import compile_model
    finally:
        sys.path.remove(str(PLUGIN / "src"))
    repo = tmp_path / "repo"
    model_file = compile_model(repo / "tagger" / "1" / "model.vxa", seed=5)
    (repo / "tagger" / "config.pbtxt").write_text(CONFIG)
    env = {"PYTHONPATH": fake_install(tmp_path / "site")}
    x = np.random.default_rng(2).standard_normal((6, 16)).astype(np.float32)
    with (
        ServerProcess(repo, models=["tagger"], env=env) as server,
        grpcclient.InferenceServerClient(server.grpc_url) as client,
    ):
        i = grpcclient.InferInput("x", [6, 16], "FP32")
        i.set_data_from_numpy(x)
        scores = client.infer("tagger", [i]).as_numpy("scores")
        config = client.get_model_config("tagger").config
    with np.load(model_file) as archive:
        logits = x @ archive["weight"] + archive["bias"]
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(scores, expected / expected.sum(axis=1, keepdims=True), rtol=1e-5)
    assert config.backend == "vendor_accel"
    assert list(config.instance_group[0].gpus) == [0, 1]  # two instances, one per card


def test_without_the_plugin_the_backend_is_unknown(tmp_path: Path) -> None:
    code = "from pysonic.backends import load_backend_class; load_backend_class('vendor_accel')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    assert "unknown backend 'vendor_accel' (available: onnxruntime, python, pytorch" in out.stderr

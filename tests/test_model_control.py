"""Model control: poll mode following the repository, and load with a config override.

Real servers on free ports, the repository edited on disk while they serve; every wait is a
poll with a deadline on what a client can observe (readiness, config, versions).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto
from tritonclient.utils import InferenceServerException

from conftest import identity_config, identity_model, save_model
from pysonic.repository.watch import model_fingerprint, repository_fingerprints
from pysonic.server import EmbeddedServer, ServerOptions, ServerProcess

pytestmark = pytest.mark.timeout(180)

POLL = 0.2
DEADLINE = 20.0  # generous: the machine is small and shared; typical waits are 1-2 polls


def _identity(repo: Path, name: str, max_batch: int = 8, version: int = 1) -> Path:
    return save_model(
        repo,
        name,
        identity_model(TensorProto.FLOAT, ["N", 4]),
        identity_config(name, "TYPE_FP32", max_batch, "[4]"),
        version=version,
    )


def _place(repo: Path, staging: Path, name: str, **kwargs: int) -> None:
    """Build a model aside and move it in at once (what the docs recommend)."""
    _identity(staging, name, **kwargs)
    (staging / name).rename(repo / name)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _wait(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL / 4)


def _infer(client: grpcclient.InferenceServerClient, model: str, version: str = "") -> np.ndarray:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    i = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    i.set_data_from_numpy(x)
    out = client.infer(model, [i], model_version=version).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(out, x)
    return out


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    _identity(root, "alpha")
    return root


@pytest.fixture
def polled(repo: Path) -> Iterator[EmbeddedServer]:
    options = ServerOptions(
        model_repository=repo,
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=None,
        model_control_mode="poll",
        repository_poll_secs=POLL,
        drain_timeout=10,
    )
    with EmbeddedServer(options) as srv:
        yield srv


@pytest.fixture
def client(polled: EmbeddedServer) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(polled.grpc_url)
    yield c
    c.close()


# ---------------------------------------------------------------- fingerprints
def test_fingerprint_sees_files_versions_and_replacements(repo: Path) -> None:
    before = model_fingerprint(repo / "alpha")
    assert any(entry[0] == "1/model.onnx" for entry in before)
    config = repo / "alpha" / "config.pbtxt"
    _replace(config, config.read_text())  # same bytes, new file
    after_replace = model_fingerprint(repo / "alpha")
    assert after_replace != before
    (repo / "alpha" / ".config.pbtxt.swp").write_text("editor noise")
    assert model_fingerprint(repo / "alpha") == after_replace
    (repo / "alpha" / "2").mkdir()
    assert model_fingerprint(repo / "alpha") != after_replace
    (repo / ".hidden").mkdir()
    assert set(repository_fingerprints(repo)) == {"alpha"}


# ---------------------------------------------------------------- poll mode
def test_poll_picks_up_new_changed_versioned_and_removed_models(
    repo: Path, tmp_path: Path, polled: EmbeddedServer, client
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    assert client.is_model_ready("alpha")
    _infer(client, "alpha")

    _place(repo, staging, "beta")
    _wait(lambda: client.is_model_ready("beta"), "the new model 'beta'")
    _infer(client, "beta")

    config = repo / "alpha" / "config.pbtxt"
    _replace(config, config.read_text().replace("max_batch_size: 8", "max_batch_size: 4"))
    _wait(
        lambda: client.get_model_config("alpha").config.max_batch_size == 4,
        "alpha's new max_batch_size",
    )
    _infer(client, "alpha")

    _identity(staging, "alpha_v2", version=2)  # a version directory, moved in whole
    (staging / "alpha_v2" / "2").rename(repo / "alpha" / "2")
    _wait(
        lambda: client.get_model_metadata("alpha").versions == ["2"],
        "version 2 of alpha (latest policy)",
    )
    assert client.is_model_ready("alpha", "2")
    assert not client.is_model_ready("alpha", "1")
    _infer(client, "alpha", "2")

    shutil.rmtree(repo / "beta")
    _wait(lambda: not client.is_model_ready("beta"), "beta to be unloaded")
    names = {m.name for m in client.get_model_repository_index().models}
    assert names == {"alpha"}
    with pytest.raises(InferenceServerException, match="unknown model 'beta'"):
        _infer(client, "beta")


def test_poll_refuses_explicit_load_and_unload(client) -> None:
    for call in (client.load_model, client.unload_model):
        with pytest.raises(InferenceServerException, match="model-control-mode poll") as info:
            call("alpha")
        assert "UNAVAILABLE" in str(info.value.status())
    assert client.is_model_ready("alpha")


def test_poll_keeps_serving_when_a_change_fails_to_load(
    repo: Path, polled: EmbeddedServer, client
) -> None:
    poller = polled.server.poller
    assert poller is not None
    config = repo / "alpha" / "config.pbtxt"
    good = config.read_text()
    _replace(config, good.replace("max_batch_size: 8", "max_batch_size: oops"))
    seen = poller.polls
    _wait(lambda: poller.polls >= seen + 2, "two polls")
    assert client.is_model_ready("alpha")  # the previous version kept serving
    _infer(client, "alpha")
    _replace(config, good.replace("max_batch_size: 8", "max_batch_size: 2"))
    _wait(lambda: client.get_model_config("alpha").config.max_batch_size == 2, "the fixed config")


def test_poll_reload_under_load_loses_no_request(
    repo: Path, polled: EmbeddedServer, client
) -> None:
    stop = threading.Event()
    failures: list[str] = []
    counts: list[int] = []

    def loop() -> None:
        c = grpcclient.InferenceServerClient(polled.grpc_url)
        n = 0
        try:
            while not stop.is_set():
                try:
                    _infer(c, "alpha")
                    n += 1
                except Exception as err:  # any failure is the test's failure
                    failures.append(repr(err))
        finally:
            counts.append(n)
            c.close()

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        config = repo / "alpha" / "config.pbtxt"
        base = config.read_text()
        for rev in range(3):
            text = base + f'parameters {{ key: "rev" value {{ string_value: "{rev}" }} }}\n'
            _replace(config, text)
            _wait(
                lambda rev=rev: (
                    client.get_model_config("alpha").config.parameters["rev"].string_value
                    == str(rev)
                ),
                f"reload {rev}",
            )
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert failures == []
    assert len(counts) == 4
    assert all(n > 0 for n in counts)


def test_cli_serve_poll_mode(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    _identity(repo, "alpha")
    args = ["--model-control-mode", "poll", "--repository-poll-secs", str(POLL)]
    with ServerProcess(repo, extra_args=args) as proc:
        client = grpcclient.InferenceServerClient(proc.grpc_url)
        try:
            assert client.is_model_ready("alpha")
            _place(repo, staging, "beta")
            _wait(lambda: client.is_model_ready("beta"), "beta in the subprocess server")
            _infer(client, "beta")
        finally:
            client.close()
        assert proc.stop() == 0


def test_cli_rejects_unknown_control_mode(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pysonic", "serve", "--model-repository", str(tmp_path),
         "--model-control-mode", "sometimes"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert out.returncode != 0
    assert "none, poll, explicit" in out.stderr


# ---------------------------------------------------------------- load with a config override
@pytest.fixture
def explicit(repo: Path) -> Iterator[grpcclient.InferenceServerClient]:
    options = ServerOptions(
        model_repository=repo,
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=None,
        model_control_mode="explicit",
        load_models=["alpha"],
        drain_timeout=10,
    )
    with EmbeddedServer(options) as srv:
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        yield c
        c.close()


def test_load_with_config_override(explicit) -> None:
    client = explicit
    override = {
        "backend": "onnxruntime",
        "max_batch_size": 2,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        "parameters": {"origin": {"string_value": "override"}},
    }
    client.load_model("alpha", config=json.dumps(override))
    config = client.get_model_config("alpha").config
    assert config.max_batch_size == 2
    assert config.parameters["origin"].string_value == "override"
    _infer(client, "alpha")
    client.load_model("alpha")  # a plain load reads config.pbtxt again
    assert client.get_model_config("alpha").config.max_batch_size == 8


def test_load_override_errors(explicit) -> None:
    client = explicit
    bad = [
        ("{not json", "INVALID_ARGUMENT", "invalid JSON model config"),
        ('{"max_batch_size": 2, "no_such_field": 1}', "INVALID_ARGUMENT", "no_such_field"),
        ('{"name": "other"}', "INVALID_ARGUMENT", "differs from the model directory"),
    ]
    for text, code, message in bad:
        with pytest.raises(InferenceServerException) as info:
            client.load_model("alpha", config=text)
        assert code in str(info.value.status())
        assert message in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.load_model("alpha", config="{}", files={"file:1/model.onnx": b"\0"})
    assert "UNIMPLEMENTED" in str(info.value.status())
    assert "'file:' parameters" in info.value.message()
    assert client.is_model_ready("alpha")
    assert client.get_model_config("alpha").config.max_batch_size == 8

"""pysonic's client against a real NVIDIA Triton server (the one bundled by nvidia-pytriton).

PyTriton needs numpy < 2, so it lives in its own venv (`.venv-triton`, made by `.ci/run`); the
server runs as a subprocess of that interpreter. The test skips, saying why, only if that server
cannot start on this machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pysonic.client import GrpcTransport, SonicClient, SonicConfig, SonicModule
from pysonic.errors import FailedPreconditionError

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(os.environ.get("PYSONIC_TRITON_PYTHON", ROOT / ".venv-triton" / "bin" / "python"))

LOCAL_CONFIG = """
name: "add_sub"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [16] },
       { name: "INPUT1" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [16] },
        { name: "OUTPUT1" data_type: TYPE_FP32 dims: [16] }]
"""


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def triton_url() -> Iterator[str]:
    if not PYTHON.exists():
        pytest.skip(f"no PyTriton interpreter at {PYTHON} (.ci/run creates .venv-triton)")
    grpc_port, http_port, metrics_port = _ports(3)
    env = {**os.environ, "LD_LIBRARY_PATH": sysconfig.get_config_var("LIBDIR") or ""}
    log = tempfile.NamedTemporaryFile("w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(PYTHON),
            str(ROOT / "tests" / "triton_interop" / "serve_identity.py"),
            str(grpc_port),
            str(http_port),
            str(metrics_port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 180
    try:
        while True:
            log.seek(0)
            text = log.read()
            if "READY" in text:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"real Triton (PyTriton) could not start here:\n{text[-1500:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{grpc_port}"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class _AddSub(SonicModule[dict]):
    def acquire(self, event: dict) -> dict[str, np.ndarray]:
        return {"INPUT0": event["a"], "INPUT1": event["b"]}

    def produce(self, event: dict, outputs: dict[str, np.ndarray]) -> None:
        event["sum"], event["diff"] = outputs["OUTPUT0"], outputs["OUTPUT1"]


@pytest.mark.parametrize("mode", ["sync", "async", "pseudoasync"])
def test_modes_against_real_triton(triton_url: str, mode: str) -> None:
    rng = np.random.default_rng(3)
    events = [
        {
            "a": rng.standard_normal((2, 16)).astype(np.float32),
            "b": rng.standard_normal((2, 16)).astype(np.float32),
        }
        for _ in range(5)
    ]
    with SonicClient(SonicConfig("add_sub", mode=mode), GrpcTransport(triton_url)) as client:
        module = _AddSub(client)
        for f in [module.process(e) for e in events]:
            f.result(60)
    for e in events:
        np.testing.assert_allclose(e["sum"], e["a"] + e["b"], rtol=1e-6)
        np.testing.assert_allclose(e["diff"], e["a"] - e["b"], rtol=1e-6)


def test_config_check_and_timing_against_real_triton(triton_url: str, tmp_path: Path) -> None:
    good = tmp_path / "good.pbtxt"
    good.write_text(LOCAL_CONFIG)
    x = np.ones((1, 16), np.float32)
    config = SonicConfig("add_sub", model_config_path=good, verbose=True)
    with SonicClient(config, GrpcTransport(triton_url)) as client:
        out = client.infer({"INPUT0": x, "INPUT1": x})
        np.testing.assert_array_equal(out["OUTPUT0"], 2 * x)
        timing = client.last_timing
        assert timing is not None
        assert timing.server_queue_ms + timing.server_compute_ms <= timing.total_ms
    bad = tmp_path / "bad.pbtxt"
    bad.write_text(LOCAL_CONFIG.replace("max_batch_size: 8", "max_batch_size: 4"))
    config = SonicConfig("add_sub", model_config_path=bad)
    with (
        SonicClient(config, GrpcTransport(triton_url)) as client,
        pytest.raises(FailedPreconditionError, match="max_batch_size"),
    ):
        client.infer({"INPUT0": x, "INPUT1": x})


def test_compression_and_ragged_against_real_triton(triton_url: str) -> None:
    entries = [
        {"INPUT0": np.full((k, 16), k, np.float32), "INPUT1": np.ones((k, 16), np.float32)}
        for k in (3, 1, 2)
    ]
    with SonicClient(SonicConfig("add_sub"), GrpcTransport(triton_url, compression="gzip")) as c:
        outs = c.infer_ragged(entries)
    for e, o in zip(entries, outs, strict=True):
        np.testing.assert_array_equal(o["OUTPUT0"], e["INPUT0"] + 1)

"""The load generator's HTTP and system shared-memory paths against a real NVIDIA Triton.

The same paths against pysonic's own server are in test_perf_loadgen.py; these check them
against the tritonserver that PyTriton bundles (its own venv, numpy < 2; the generator here talks
to it over the wire), so that ``pysonic perf`` measures real Triton deployments too. Skips,
saying why, when that venv is absent or Triton cannot start.
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

import pytest

from conftest import check_one_clean_level
from pysonic.perf._engine import LoadLevel
from pysonic.perf.profiler import PerfOptions, ProfileSettings, run_perf

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(os.environ.get("PYSONIC_TRITON_PYTHON", ROOT / ".venv-triton" / "bin" / "python"))
FAST = ProfileSettings(window_ms=400, max_trials=3, stability_pct=50.0, settle_s=0.2)


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def triton() -> Iterator[dict[str, str]]:
    if not PYTHON.exists():
        pytest.skip(f"no PyTriton interpreter at {PYTHON} (.ci/run creates .venv-triton)")
    grpc_port, http_port, metrics_port = _ports(3)
    env = {**os.environ, "LD_LIBRARY_PATH": sysconfig.get_config_var("LIBDIR") or ""}
    log = tempfile.NamedTemporaryFile("w+")  # noqa: SIM115
    script = ROOT / "tests" / "triton_interop" / "serve_identity.py"
    proc = subprocess.Popen(
        [str(PYTHON), str(script), str(grpc_port), str(http_port), str(metrics_port)],
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
        yield {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}"}
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.parametrize(
    ("protocol", "shm"), [("http", "none"), ("grpc", "system"), ("http", "system")]
)
def test_http_and_shared_memory_against_triton(
    triton: dict[str, str], protocol: str, shm: str
) -> None:
    options = PerfOptions(
        model="add_sub",
        url=triton[protocol],
        protocol=protocol,
        batch=2,
        shared_memory=shm,
        levels=[LoadLevel(concurrency=2)],
        settings=FAST,
    )
    check_one_clean_level(run_perf(options), batch=2)


def test_shared_memory_regions_are_released(triton: dict[str, str]) -> None:
    import tritonclient.grpc as grpcclient

    options = PerfOptions(
        model="add_sub",
        url=triton["grpc"],
        shared_memory="system",
        levels=[LoadLevel(rate=50.0)],
        settings=FAST,
    )
    run_perf(options)
    client = grpcclient.InferenceServerClient(triton["grpc"])
    status = client.get_system_shared_memory_status(as_json=True)
    client.close()
    assert not status.get("regions")
    assert not [p for p in Path("/dev/shm").glob("pysonic_perf_*")]

"""Run each atheris fuzz harness (tests/fuzz) for a bounded time: 0 crashes allowed.

A crash is any input that makes pysonic raise something other than its own clear errors (HTTP:
a status 500; gRPC: an exception that is not a ``PysonicError``, or INTERNAL). libFuzzer then
exits non-zero and writes the input to ``crash-*`` in the artifacts directory; rerun it with
``python tests/fuzz/fuzz_http.py path/to/crash-...``. ``PYSONIC_FUZZ_SECONDS`` sets the time
per harness (default 20).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="the fuzz harnesses need atheris (pip install atheris)")

FUZZ = Path(__file__).parent / "fuzz"
SECONDS = int(os.environ.get("PYSONIC_FUZZ_SECONDS", "20"))


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 180)
@pytest.mark.parametrize("harness", ["fuzz_http", "fuzz_grpc"])
def test_fuzz_harness_finds_no_crash(harness: str, tmp_path: Path) -> None:
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    artifacts.mkdir()
    cmd = [
        sys.executable,
        str(FUZZ / f"{harness}.py"),
        f"-max_total_time={SECONDS}",
        "-timeout=30",
        "-rss_limit_mb=3072",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    if harness == "fuzz_http":
        cmd.insert(2, f"-dict={FUZZ / 'http.dict'}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = proc.communicate(timeout=SECONDS + 150)
    finally:
        proc.kill()
        proc.wait()
        # libFuzzer exits without running Python's atexit: remove the harness's shm object
        Path(f"/dev/shm/pysonic_fuzz_{proc.pid}").unlink(missing_ok=True)
    crashes = sorted(p.name for p in artifacts.iterdir())
    assert proc.returncode == 0, f"{harness} crashed ({crashes}):\n{log[-6000:]}"
    assert "Uncaught Python exception" not in log
    assert not crashes
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    assert runs, log[-3000:]
    assert int(runs.group(1)) > 100, "the harness hardly ran"

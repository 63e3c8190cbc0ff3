"""The simulator against a real local cluster (slow): throughput within 15%."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pysonic.cluster import haproxy_binary

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed")
def test_simulation_matches_a_real_cluster_within_15_percent(tmp_path: Path) -> None:
    out = tmp_path / "validation.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "120"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "simulate_validation.py"), "--quick",
         "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=380, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert rows
    for row in rows:
        assert row["real_errors"] == 0
        assert abs(row["ratio"] - 1) <= 0.15, (row, run.stdout)

"""The miniAOD-like workflow: same physics in every inference mode, configuration, the demo."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest

from pysonic.server import EmbeddedServer, ServerOptions
from pysonic.workflow._config import DEFAULT_MODULES, WorkflowConfig
from pysonic.workflow._miniaod import load_payloads, run_workflow

ROOT = Path(__file__).resolve().parent.parent
REPO = ROOT / "model_repository"


@pytest.fixture(scope="module")
def payloads() -> list[dict[str, Any]]:
    return load_payloads("sample", 10, spread=True)


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    options = ServerOptions(
        model_repository=REPO,
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=None,
        model_control_mode="explicit",
        load_models=sorted(set(DEFAULT_MODULES.values())),
    )
    with EmbeddedServer(options) as server:
        yield server.grpc_url


@pytest.fixture(scope="module")
def direct(payloads: list[dict[str, Any]]) -> Any:
    config = WorkflowConfig(streams=2, threads=2, output=None).with_inference(model_repository=REPO)
    return run_workflow(config, payloads=payloads)


def test_spread_payloads_cover_every_process(payloads: list[dict[str, Any]]) -> None:
    assert {p["process"] for p in payloads} == {"ttbar", "qcd", "wjets"}
    assert all(len(p["particles"]["px"]) > 50 for p in payloads)


def test_direct_run_produces_every_output(direct: Any) -> None:
    assert direct.report.events == 10
    assert [o["event"] for o in direct.outputs] == list(range(10))
    for out in direct.outputs:
        assert out["ak8_particlenet"].shape == (len(out["ak8_pt"]), 5)
        assert out["ak8_part"].shape == (len(out["ak8_pt"]), 5)
        assert out["ak4_particlenet"].shape == (len(out["ak4_pt"]), 5)
        assert out["met"].shape == (2,)
        assert np.isfinite(out["ak8_part"]).all()
    assert sum(len(o["ak8_pt"]) for o in direct.outputs) > 5
    assert 0 < direct.inference_share < 1


@pytest.mark.parametrize("mode", ["sonic-sync", "sonic-async", "sonic-pseudoasync"])
def test_every_sonic_mode_gives_the_direct_physics(
    mode: str, direct: Any, payloads: list[dict[str, Any]], server_url: str
) -> None:
    config = WorkflowConfig(streams=3, threads=2, output=None).with_mode(mode)
    result = run_workflow(config, payloads=payloads, server_url=server_url)
    assert set(result.modes.values()) == {mode}
    for a, b in zip(direct.outputs, result.outputs, strict=True):
        assert a["event"] == b["event"]
        np.testing.assert_array_equal(a["ak8_label"], b["ak8_label"])
        for key in ("ak8_particlenet", "ak8_part", "ak4_particlenet"):
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
        np.testing.assert_allclose(a["met"], b["met"], rtol=1e-5, atol=1e-4)
        assert a["top_candidate"] == b["top_candidate"]


def test_config_file_switches_one_module(
    tmp_path: Path, direct: Any, payloads: list[dict[str, Any]], server_url: str
) -> None:
    path = tmp_path / "workflow.toml"
    path.write_text(
        f"""
[process]
streams = 2
threads = 1
[output]
path = "outputs/run.parquet"
[inference]
mode = "sonic-async"
server = "{server_url}"
model_repository = "{REPO}"
[modules.part_ak8]
mode = "direct"
"""
    )
    config = WorkflowConfig.from_file(path)
    assert config.modules["part_ak8"].mode == "direct"
    assert config.modules["deepmet"].mode == "sonic-async"
    assert config.output == tmp_path / "outputs" / "run.parquet"
    result = run_workflow(config, payloads=payloads)
    assert result.modes["part_ak8"] == "direct"
    back = ak.from_parquet(result.output_path)
    assert len(back) == 10
    assert {"ak8_particlenet", "ak8_part", "met", "gen_met", "top_candidate"} <= set(back.fields)
    for a, b in zip(direct.outputs, result.outputs, strict=True):
        np.testing.assert_allclose(a["ak8_part"], b["ak8_part"], atol=1e-6)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[inference]\nmode = 'fast'\n", "inference mode 'fast' unknown"),
        ("[modules.bogus]\nmode = 'direct'\n", "unknown ML modules"),
        ("[proces]\nstreams = 2\n", "unknown workflow config sections"),
    ],
)
def test_config_errors_are_clear(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        WorkflowConfig.from_file(path)


def test_demo_end_to_end_short(tmp_path: Path) -> None:
    from pysonic.demo import DemoOptions, run_demo

    options = DemoOptions(
        model_repository=REPO, events=12, streams=2, scan=(1, 2), out_dir=tmp_path
    )
    result = run_demo(options)
    data = result.to_dict()
    assert data["n_events"] == 12
    assert data["events_per_s_direct"] > 0
    assert data["events_per_s_sonic_async"] > 0
    assert data["auc"] is not None
    assert 0.0 <= data["auc"] <= 1.0
    assert data["max_output_diff"] < 1e-4
    assert set(data["scan"]) == {"direct", "sonic-async"}
    assert {s["model"] for s in data["server_stats"]} == {"particlenet_lite", "part", "deepmet"}
    assert all(s["requests"] >= s["executions"] > 0 for s in data["server_stats"])
    assert Path(data["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert Path(data["outputs"]["sonic_async"]).exists()
    json.dumps(data)

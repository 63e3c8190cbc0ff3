"""The public names of each package facade: nothing leaks, nothing disappears by accident."""

from __future__ import annotations

import importlib

import pytest

EXPECTED = {
    "pysonic": ["__version__"],
    "pysonic.server": [
        "EmbeddedServer",
        "InferenceCore",
        "Server",
        "ServerOptions",
        "ServerProcess",
        "ServerState",
        "StartupError",
    ],
    "pysonic.scheduling": [
        "DEFAULT_QUEUE_CAP",
        "BatcherConfig",
        "DefaultScheduler",
        "DynamicBatcher",
        "ExecutedBatch",
        "Executor",
        "InstancePool",
        "PendingRequest",
        "QueuePolicy",
        "RequestState",
        "RequestsExecutor",
        "TimeoutAction",
        "make_scheduler",
    ],
    "pysonic.client": [
        "AsyncSonicClient",
        "AsyncTransport",
        "Balanced",
        "CallTiming",
        "ClientMetrics",
        "GrpcTransport",
        "LocalFallback",
        "Mode",
        "ModelIndexEntry",
        "RetryPolicy",
        "Retrying",
        "ServerEntry",
        "ServerStatus",
        "SiteConfig",
        "SonicClient",
        "SonicConfig",
        "SonicModule",
        "TLSConfig",
        "build_transport",
        "check_model_config",
        "connect",
    ],
    "pysonic.models": [
        "DEEPMET",
        "DEEPMET_FEATURES",
        "JET_CLASSES",
        "MODELS",
        "PART",
        "PARTICLENET",
        "PARTICLENET_LITE",
        "ModelSpec",
        "TensorSpec",
    ],
    "pysonic.events": [
        "JET_COLLECTIONS",
        "SAMPLE",
        "concatenate",
        "deepmet_inputs",
        "file_checksum",
        "jet_inputs",
        "make_sample",
        "read_events",
        "read_root",
        "sample_path",
        "simulate",
        "verify_sample",
        "write_events",
        "write_root",
    ],
    "pysonic.analysis": [
        "BACKENDS",
        "JET_INPUTS",
        "EngineSpec",
        "FlatJets",
        "JetTagger",
        "attach_outputs",
        "close_engines",
        "engine",
        "flatten_jets",
        "jet_constituents",
        "pad_jagged",
    ],
    "pysonic.perf": [
        "DirectPoint",
        "LoadLevel",
        "PerfOptions",
        "PerfReport",
        "ProfileSettings",
        "SonicModel",
        "bench_direct",
        "plot_direct",
        "plot_perf",
        "run_perf",
        "write_csv",
    ],
    "pysonic.workflow": [
        "Event",
        "ExternalWork",
        "InferenceConfig",
        "Module",
        "ModuleTiming",
        "Process",
        "ProcessError",
        "Producer",
        "TimingReport",
        "WaitingTaskHolder",
        "WorkflowConfig",
        "WorkflowResult",
        "load_payloads",
        "run_workflow",
    ],
    "pysonic.cluster": [
        "Backend",
        "ClusterError",
        "ClusterState",
        "HAProxySettings",
        "LocalCluster",
        "ServerRecord",
        "backend_stats",
        "cluster_status",
        "haproxy_binary",
        "load_state",
        "render_config",
        "site_toml",
        "stop_cluster",
    ],
    "pysonic.simulate": [
        "Arrivals",
        "JobProfile",
        "KedaPolicy",
        "Scenario",
        "ServerProfile",
        "SimResult",
        "plot_simulation",
        "scenario_presets",
        "seed000",
        "seed002",
        "simulate",
        "t4_tagger",
    ],
    "pysonic.backends": [
        "BUILTIN_BACKENDS",
        "Backend",
        "BackendRequest",
        "InstanceSpec",
        "available_backends",
        "load_backend_class",
    ],
}


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_exports(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(EXPECTED[module])
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name} is exported but missing"


def test_version_single_source() -> None:
    from importlib.metadata import version

    import pysonic

    assert version("pysonic") == pysonic.__version__

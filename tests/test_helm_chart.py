"""The Helm chart (deploy/helm/pysonic): renders, lints and validates offline.

Every rendered object is checked against the Kubernetes API schemas (kubernetes-validate, strict:
unknown fields fail) for the oldest and newest Kubernetes the chart supports; KEDA's
ScaledObject and the Prometheus operator's objects against their published CRD schemas vendored
in tests/data/crds; Envoy's envoy.yaml against Envoy's v3 API (envoy-data-plane); haproxy.cfg
with ``haproxy -c``; prometheus.yml with ``promtool check config``; the rules with
``promtool test rules``. No cluster is involved.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from _chart import (
    CHART,
    NAMESPACE,
    RELEASE,
    ROOT,
    crd_schema,
    envoy_bootstrap,
    find,
    lua_source,
    parse_envoy_bootstrap,
    pod_targets,
    render,
)
from pysonic.cluster import haproxy_binary

helm = pytest.importorskip("helm_python", reason="pip install 'pysonic[test]' (helm-python-sdk)")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

pytestmark = pytest.mark.timeout(120)

#: the value sets a site would start from (deploy/helm/pysonic/ci/<name>-values.yaml, the
#: chart-testing convention) and the defaults; each must render, lint and validate
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    **{
        path.name.removesuffix("-values.yaml"): yaml.safe_load(path.read_text())
        for path in sorted((CHART / "ci").glob("*-values.yaml"))
    },
}

#: custom resources -> (group, plural, version) of the vendored CRD
CRDS = {
    "ScaledObject": ("keda.sh", "scaledobjects", "v1alpha1"),
    "ServiceMonitor": ("monitoring.coreos.com", "servicemonitors", "v1"),
    "PrometheusRule": ("monitoring.coreos.com", "prometheusrules", "v1"),
}
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())


@pytest.fixture(scope="module", params=list(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(VALUE_SETS[request.param])


def _validate_custom(obj: dict[str, Any]) -> None:
    schema = crd_schema(*CRDS[obj["kind"]])
    group, _, version = CRDS[obj["kind"]]
    assert obj["apiVersion"] == f"{group}/{version}"
    jsonschema.validate(obj, schema, cls=jsonschema.Draft7Validator)


# ---------------------------------------------------------------------------- chart-wide
def test_example_values_are_there() -> None:
    assert set(VALUE_SETS) == {"default", "nvidia-cvmfs", "amd-configmap", "haproxy", "static"}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_chart_lints_clean(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # strict lint: only the informational "icon is recommended" is left
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_values_schema_rejects_mistakes() -> None:
    report = helm.lint(CHART, {"loadBalancer": {"tpye": "haproxy"}}, strict=True)
    assert any("tpye" in e for e in report["errors"])
    chart = helm.Chart.load(CHART)
    for bad in (
        {"loadBalancer": {"type": "nginx"}},
        {"server": {"gpu": {"vendor": "intel"}}},
        {"server": {"modelRepository": {"source": "s3"}}},
        {"autoscaling": {"window": "30 seconds"}},
    ):
        with pytest.raises(helm.HelmValuesError):
            chart.render(bad, name=RELEASE, namespace=NAMESPACE)
    with pytest.raises(helm.HelmRenderError, match="minReplicas"):
        chart.render({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}})
    with pytest.raises(helm.HelmRenderError, match="claimName"):
        chart.render(
            {"server": {"modelRepository": {"pvc": {"claimName": ""}}}},
            name=RELEASE,
            namespace=NAMESPACE,
        )


def test_every_object_validates(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    kinds = set()
    for obj in objects:
        kinds.add(obj["kind"])
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        if obj["kind"] in CRDS:
            _validate_custom(obj)
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    assert {"Deployment", "Service"} <= kinds
    expected = {
        "default": {"ScaledObject", "ConfigMap"},
        "nvidia-cvmfs": {"ServiceMonitor", "PrometheusRule", "ScaledObject"},
        "haproxy": {"ServiceMonitor", "PrometheusRule", "ScaledObject"},
    }.get(name, set())
    assert expected <= kinds


def test_install_notes_name_the_address() -> None:
    chart = helm.Chart.load(CHART)
    notes = chart.render(None, name=RELEASE, namespace=NAMESPACE)["pysonic/templates/NOTES.txt"]
    assert f"{RELEASE}-pysonic-lb.{NAMESPACE}.svc:8001" in notes
    assert "nv_inference_queue_duration_us" in notes


def test_strict_validation_catches_a_typo() -> None:
    # the validators above reject what a cluster with strict field validation would
    deployment = find(render(), "Deployment", "-server")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)
    scaled = find(render(), "ScaledObject")
    scaled["spec"]["pollingIntervall"] = 5
    with pytest.raises(jsonschema.ValidationError):
        _validate_custom(scaled)


# ---------------------------------------------------------------------------- servers
def _server_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "Deployment", "-server")["spec"]["template"]["spec"]


def test_server_deployment_defaults() -> None:
    objects = render()
    deployment = find(objects, "Deployment", "-server")
    assert "replicas" not in deployment["spec"]  # KEDA owns the count
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    container = pod["spec"]["containers"][0]
    assert container["args"][:6] == [
        "serve",
        "--model-repository=/models",
        "--host=0.0.0.0",
        "--grpc-port=8001",
        "--http-port=8000",
        "--metrics-port=8002",
    ]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8001, "http": 8000, "metrics": 8002}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "pysonic-models"
    assert "nodeSelector" not in pod["spec"]
    assert "tolerations" not in pod["spec"]
    # the drain outlives --drain-timeout
    assert pod["spec"]["terminationGracePeriodSeconds"] > 30

    services = {s["metadata"]["name"]: s["spec"] for s in objects if s["kind"] == "Service"}
    server = services[f"{RELEASE}-pysonic-server"]
    assert {p["name"]: p["port"] for p in server["ports"]} == {
        "grpc": 8001,
        "http": 8000,
        "metrics": 8002,
    }
    assert services[f"{RELEASE}-pysonic-server-headless"]["clusterIP"] == "None"
    assert {p["port"] for p in services[f"{RELEASE}-pysonic-lb"]["ports"]} == {8001}


def test_server_args_match_pysonic_serve() -> None:
    # every flag the chart passes exists in `pysonic serve` (typer would refuse the pod's args)
    from typer.testing import CliRunner

    from pysonic.cli import app

    help_text = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "300"}).output
    container = _server_pod(render(VALUE_SETS["static"]))["containers"][0]
    for arg in container["args"][1:]:
        assert arg.split("=")[0] in help_text, arg


@pytest.mark.parametrize(
    ("vendor", "resource", "selector"),
    [
        ("nvidia", "nvidia.com/gpu", {"nvidia.com/gpu.present": "true"}),
        ("amd", "amd.com/gpu", None),
    ],
)
def test_gpu_values(vendor: str, resource: str, selector: dict[str, str] | None) -> None:
    values = {"server": {"gpu": {"vendor": vendor, "count": 2}, "nodeSelector": {"site": "t2"}}}
    pod = _server_pod(render(values))
    resources = pod["containers"][0]["resources"]
    assert resources["limits"][resource] == 2
    assert resources["requests"][resource] == 2
    assert resources["limits"]["memory"] == "8Gi"  # the CPU/memory values stay
    assert pod["nodeSelector"] == {"site": "t2", **(selector or {})}
    assert {"key": resource, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_model_repository_sources() -> None:
    cvmfs = _server_pod(render(VALUE_SETS["nvidia-cvmfs"]))
    assert cvmfs["volumes"][0]["hostPath"] == {"path": "/cvmfs/cms.cern.ch", "type": "Directory"}
    assert "--model-repository=/models/sonic/models" in cvmfs["containers"][0]["args"]
    assert cvmfs["containers"][0]["volumeMounts"][0]["mountPropagation"] == "HostToContainer"
    configmap = _server_pod(render(VALUE_SETS["amd-configmap"]))
    assert configmap["volumes"][0]["configMap"]["name"] == "tiny-models"
    assert configmap["containers"][0]["volumeMounts"][0]["readOnly"] is True


# ---------------------------------------------------------------------------- autoscaling
QUERY = (
    "sum(rate(nv_inference_queue_duration_us{{{sel}}}[{w}])) / "
    "(sum(rate(nv_inference_exec_count{{{sel}}}[{w}])) * 1000 > 0) or vector(0)"
)


def test_scaledobject_defaults() -> None:
    objects = render()
    scaled = find(objects, "ScaledObject")
    spec = scaled["spec"]
    server = find(objects, "Deployment", "-server")
    assert spec["scaleTargetRef"]["name"] == server["metadata"]["name"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 10)
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (30, 300)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "Value"
    meta = trigger["metadata"]
    assert meta["threshold"] == "100"
    sel = f'namespace="{NAMESPACE}",pod=~"{RELEASE}-pysonic-server-.*"'
    assert meta["query"] == QUERY.format(sel=sel, w="30s")
    # one server removed per polling interval at most (docs/cluster.md: why)
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 30}]
    assert scale_down["stabilizationWindowSeconds"] == 300


def test_scaledobject_behavior_can_be_dropped() -> None:
    spec = find(render({"autoscaling": {"behavior": None}}), "ScaledObject")["spec"]
    assert "advanced" not in spec


def test_scaledobject_values() -> None:
    values = {
        "autoscaling": {
            "minReplicas": 0,
            "maxReplicas": 40,
            "pollingInterval": 10,
            "cooldownPeriod": 120,
            "threshold": 250.5,
            "window": "1m",
            "model": "particlenet",
            "metricSelector": 'job="sonic"',
        }
    }
    spec = find(render(values), "ScaledObject")["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 40)
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (10, 120)
    meta = spec["triggers"][0]["metadata"]
    assert meta["threshold"] == "250.5"
    assert meta["query"] == QUERY.format(sel='job="sonic",model="particlenet"', w="1m")
    custom = find(render({"autoscaling": {"query": "max(x)"}}), "ScaledObject")
    assert custom["spec"]["triggers"][0]["metadata"]["query"] == "max(x)"
    fixed = render({"autoscaling": {"enabled": False}})
    assert not [o for o in fixed if o["kind"] == "ScaledObject"]
    assert find(fixed, "Deployment", "-server")["spec"]["replicas"] == 1


# ---------------------------------------------------------------------------- load balancers
def test_envoy_config_is_a_valid_bootstrap() -> None:
    objects = render()
    config = envoy_bootstrap(objects)
    bootstrap = parse_envoy_bootstrap(config)
    (cluster, prometheus) = bootstrap.static_resources.clusters
    assert cluster.name == "pysonic_servers"
    assert cluster.lb_policy.name == "LEAST_REQUEST"
    assert cluster.least_request_lb_config.choice_count == 2
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint
    assert address.address.socket_address.address == (
        f"{RELEASE}-pysonic-server-headless.{NAMESPACE}.svc.cluster.local"
    )
    assert address.health_check_config.port_value == 8000  # HTTP health on the HTTP port
    (health,) = cluster.health_checks
    assert health.http_health_check.path == "/v2/health/ready"
    assert cluster.outlier_detection.consecutive_5xx == 5
    assert prometheus.name == "prometheus"

    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    assert hcm["typed_config"]["codec_type"] == "HTTP2"
    route = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["retry_policy"]["retry_on"] == "unavailable,reset,connect-failure,refused-stream"
    assert [f["name"] for f in hcm["typed_config"]["http_filters"]] == [
        "envoy.filters.http.lua",
        "envoy.filters.http.router",
    ]
    assert "/inference.GRPCInferenceService/RepositoryIndex" in lua_source(config)
    # the pods roll when the configuration changes
    deployment = find(objects, "Deployment", "-lb")
    assert deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_envoy_schema_check_can_fail() -> None:
    config = envoy_bootstrap(render())
    config["static_resources"]["clusters"][0]["outlier_detection"]["consecutive_5xxx"] = 1
    with pytest.raises(KeyError, match="consecutive_5xxx"):
        parse_envoy_bootstrap(config)
    config = envoy_bootstrap(render())
    config["static_resources"]["clusters"][0]["lb_policy"] = "LEAST_REQUESTS"
    with pytest.raises(ValueError, match="LEAST_REQUESTS"):
        parse_envoy_bootstrap(config)


def test_envoy_values() -> None:
    values = {
        "loadBalancer": {
            "retries": {"enabled": False},
            "envoy": {
                "lbPolicy": "ROUND_ROBIN",
                "admission": {"enabled": False},
            },
        }
    }
    config = envoy_bootstrap(render(values))
    bootstrap = parse_envoy_bootstrap(config)
    (cluster,) = bootstrap.static_resources.clusters  # no Prometheus cluster without admission
    assert cluster.lb_policy.name == "ROUND_ROBIN"
    hcm = bootstrap.static_resources.listeners[0].filter_chains[0].filters[0]
    assert b"envoy.filters.http.lua" not in bytes(hcm)
    assert b"retry_host_predicates" not in bytes(hcm)
    https = render(
        {"loadBalancer": {"envoy": {"admission": {"prometheusUrl": "https://p.example:9091"}}}}
    )
    prometheus = parse_envoy_bootstrap(envoy_bootstrap(https)).static_resources.clusters[1]
    socket = prometheus.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (socket.socket_address.address, socket.socket_address.port_value) == ("p.example", 9091)
    assert prometheus.transport_socket.name == "envoy.transport_sockets.tls"


def test_haproxy_config() -> None:
    objects = render(VALUE_SETS["haproxy"])
    assert not [o for o in objects if o["metadata"]["name"].endswith("-envoy")]
    cfg = find(objects, "ConfigMap", "-haproxy")["data"]["haproxy.cfg"]
    assert "balance leastconn" in cfg
    assert "retry-on conn-failure empty-response response-timeout" in cfg
    assert "option redispatch" in cfg
    assert "http-check send meth GET uri /v2/health/ready" in cfg
    assert f"{RELEASE}-pysonic-server-headless.{NAMESPACE}.svc.cluster.local:8001" in cfg
    haproxy = haproxy_binary()
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy): config not checked")
    check = subprocess.run(
        [haproxy, "-c", "-f", "/dev/stdin"], input=cfg, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


# ---------------------------------------------------------------------------- Prometheus, Grafana
def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return promtool


def test_promtool_rule_unit_tests() -> None:
    out = subprocess.run(
        [_promtool(), "test", "rules", str(ROOT / "deploy" / "prometheus" / "rules_test.yml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rules_file_is_shared_with_the_chart() -> None:
    standalone = ROOT / "deploy" / "prometheus" / "rules.yml"
    assert standalone.read_text() == (CHART / "files" / "prometheus-rules.yml").read_text()
    rule = find(render(VALUE_SETS["haproxy"]), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(standalone.read_text())["groups"]


def test_prometheus_config(tmp_path: Path) -> None:
    objects = render(VALUE_SETS["haproxy"])
    config = find(objects, "ConfigMap", "-prometheus")["data"]
    template = find(objects, "Deployment", "-server")["spec"]["template"]["metadata"]
    prometheus_yml = yaml.safe_load(config["prometheus.yml"])
    assert prometheus_yml["scrape_configs"][0]["kubernetes_sd_configs"][0]["role"] == "pod"
    pod = {"name": "p", "ip": "10.1.2.3", "port": 8001, **template}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(pod_targets(prometheus_yml, [pod])))
    (tmp_path / "pysonic-rules.yml").write_text(config["pysonic-rules.yml"])
    out = subprocess.run(
        [_promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 11 rules found" in out.stdout


def test_grafana_dashboard() -> None:
    cm = find(render(), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["pysonic.json"])
    assert dashboard == json.loads((ROOT / "deploy" / "grafana" / "pysonic.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "nv_inference_count",  # throughput
        "nv_inference_queue_duration_us",  # queue latency
        "nv_inference_exec_count",  # batch size = count / exec_count
        "kube_deployment_status_replicas",  # replicas
        "nv_inference_pending_request_count",  # per-server load
        "nv_gpu_utilization",  # GPU utilization (Triton), DCGM below
        "DCGM_FI_DEV_GPU_UTIL",
    ):
        assert metric in exprs
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "model"}

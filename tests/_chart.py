"""Helpers for the Helm chart tests: render deploy/helm/pysonic offline, pick objects, validate.

Rendering uses Helm's own library through helm-python-sdk (no helm binary, no cluster).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import re
import socket
import warnings
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "pysonic"
CRDS = Path(__file__).resolve().parent / "data" / "crds"
RELEASE = "sonic"
NAMESPACE = "cms"


def render(values: dict[str, Any] | None = None, *, release: str = RELEASE) -> list[dict[str, Any]]:
    """Every object the chart renders for ``values``, in template order."""
    import helm_python as helm

    chart = helm.Chart.load(CHART)
    manifests = chart.render(values, name=release, namespace=NAMESPACE, is_install=True)
    objects: list[dict[str, Any]] = []
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):  # printed by helm install, not a manifest
            continue
        objects.extend(doc for doc in yaml.safe_load_all(manifests[path]) if doc)
    return objects


def find(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(hits) == 1, f"{kind} *{name_suffix}: {[o['metadata']['name'] for o in hits]}"
    return hits[0]


def envoy_bootstrap(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The envoy.yaml of the rendered Envoy ConfigMap, parsed."""
    return yaml.safe_load(find(objects, "ConfigMap", "-envoy")["data"]["envoy.yaml"])


def lua_source(bootstrap: dict[str, Any]) -> str:
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = hcm["typed_config"]["http_filters"]
    lua = next(f for f in filters if f["name"] == "envoy.filters.http.lua")
    return lua["typed_config"]["default_source_code"]["inline_string"]


# ---------------------------------------------------------------------------- CRD schemas
def _strict(schema: Any) -> Any:
    """A CRD's structural schema that rejects unknown fields (kubectl's strict validation)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        pattern = out.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("^(?i)"):
            out["pattern"] = "(?i)^" + pattern[5:]  # Go allows the flag there, Python does not
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_schema(group: str, plural: str, version: str) -> dict[str, Any]:
    """The openAPIV3Schema of a vendored CRD (tests/data/crds/<group>_<plural>.yaml), strict."""
    crd = yaml.safe_load((CRDS / f"{group}_{plural}.yaml").read_text())
    served = {v["name"]: v for v in crd["spec"]["versions"]}
    schema = copy.deepcopy(served[version]["schema"]["openAPIV3Schema"])
    return _strict(schema)


# ---------------------------------------------------------------------------- Envoy schema
#: the typed_config types the chart's envoy.yaml uses: importing a module registers its messages
#: for google.protobuf.Any
_ENVOY_EXTENSIONS = (
    "envoy.extensions.filters.network.http_connection_manager.v3",
    "envoy.extensions.filters.http.router.v3",
    "envoy.extensions.filters.http.lua.v3",
    "envoy.extensions.upstreams.http.v3",
    "envoy.extensions.retry.host.previous_hosts.v3",
    "envoy.extensions.transport_sockets.tls.v3",
)
_PROTO_FIELD = re.compile(r"[a-z][a-z0-9_]*")


@cache
def _bootstrap_class() -> type:
    with warnings.catch_warnings():
        # betterproto2's generated pydantic validators use a form pydantic 2.12 deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        for module in _ENVOY_EXTENSIONS:
            importlib.import_module(f"envoy_data_plane.{module}")
        from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

    return Bootstrap


@contextlib.contextmanager
def _proto_field_names() -> Iterator[None]:
    """betterproto2 snake-cases every key before looking it up, which turns proto field names
    with digits into names that do not exist ("consecutive_5xx" -> "consecutive_5_xx"): while
    parsing, keys already in proto field-name form are looked up as they are (camelCase JSON
    names still go through the library's conversion)."""
    import betterproto2
    from betterproto2 import casing

    original = betterproto2.safe_snake_case

    def field_name(key: str) -> str:
        return casing.sanitize_name(key) if _PROTO_FIELD.fullmatch(key) else original(key)

    betterproto2.safe_snake_case = field_name
    try:
        yield
    finally:
        betterproto2.safe_snake_case = original


def parse_envoy_bootstrap(config: dict[str, Any]) -> Any:
    """Envoy's v3 Bootstrap message from ``config``; unknown fields, wrong enum values and
    unregistered typed_config types raise, as they would make Envoy refuse the file."""
    bootstrap_class = _bootstrap_class()
    with _proto_field_names():
        bootstrap = bootstrap_class.from_dict(config)
    bytes(bootstrap)  # serializes every field: wrong scalar types fail here
    return bootstrap


# ---------------------------------------------------------------------------- Prometheus
def pod_targets(prometheus_yml: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The chart's prometheus.yml with Kubernetes pod discovery replaced by the targets that it
    would discover for ``pods`` (``{"name", "ip", "port", "labels", "annotations"}``).

    Debian's Prometheus is built without Kubernetes discovery; static targets carrying the same
    ``__meta_kubernetes_*`` labels go through the chart's relabel_configs unchanged, so a real
    Prometheus still applies them exactly as it would in a cluster.
    """
    config = copy.deepcopy(prometheus_yml)
    (job,) = config["scrape_configs"]
    del job["kubernetes_sd_configs"]
    groups = []
    for pod in pods:
        meta = {
            "__meta_kubernetes_namespace": NAMESPACE,
            "__meta_kubernetes_pod_name": pod["name"],
        }
        for key, value in pod.get("labels", {}).items():
            meta[f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', key)}"] = value
        for key, value in pod.get("annotations", {}).items():
            meta[f"__meta_kubernetes_pod_annotation_{re.sub(r'[^a-zA-Z0-9_]', '_', key)}"] = value
        groups.append({"targets": [f"{pod['ip']}:{pod['port']}"], "labels": meta})
    job["static_configs"] = groups
    return config


def free_port() -> int:
    """A port free on 127.0.0.1 now, for programs that cannot report the one they bound."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

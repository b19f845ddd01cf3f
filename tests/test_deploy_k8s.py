"""deploy/k8s as an operator applies it: every overlay renders with `kubectl kustomize` and
validates offline (built-in kinds against the Kubernetes schemas of kubernetes-validate, the
KEDA and Prometheus Operator CRDs against cloudcoil's models of their published schemas; kinds
with no schema available here are listed, printed and asserted, never silently passed), and
the rendered objects hold what the overlays promise: a disruption budget and a scaler per
service, ingress only to the router's API and the providers' webhooks, credentials from
Secrets, topics and rules generated from their single source."""

from __future__ import annotations

import copy
import importlib
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from pydantic import BaseModel

from shared.config import CommonSettings
from shared.topics import topic_specs
from tools import manifests

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
SERVICES = ("router", "sms", "email", "push", "voice")
CHANNELS = SERVICES[1:]
K8S_VERSION = "1.32.0"  # the kubectl installed here; kubernetes-validate knows 1.2x-1.37
PROM_OPERATOR = "cloudcoil.models.prometheus_operator.v1"

# CRDs checked against a published schema: the pydantic models cloudcoil generates from them
# (imported on first use: the Prometheus Operator's take seconds to build).
CRD_MODELS = {
    "keda.sh/v1alpha1/ScaledObject": ("cloudcoil.models.keda.v1alpha1", "ScaledObject"),
    "monitoring.coreos.com/v1/ServiceMonitor": (PROM_OPERATOR, "ServiceMonitor"),
    "monitoring.coreos.com/v1/PodMonitor": (PROM_OPERATOR, "PodMonitor"),
    "monitoring.coreos.com/v1/PrometheusRule": (PROM_OPERATOR, "PrometheusRule"),
}
# CRDs no PyPI package here ships a schema for: listed, printed, structure-checked below only.
CRDS_WITHOUT_SCHEMA = {
    "kafka.strimzi.io/v1beta2/KafkaTopic": "no PyPI package ships the Strimzi CRD schemas",
}

kubectl = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(kubectl is None, reason="kubectl not installed")


@cache
def crd_model(key: str) -> type[BaseModel]:
    module, name = CRD_MODELS[key]
    model: type[BaseModel] = getattr(importlib.import_module(module), name)
    return model


def gvk(doc: dict[str, Any]) -> str:
    return f"{doc['apiVersion']}/{doc['kind']}"


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    assert kubectl is not None
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def of_kind(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in render(overlay) if d["kind"] == kind}


def validate(doc: dict[str, Any]) -> str:
    """Validate one object; return how ("schema", "crd-model", "no-schema"). Raises on error."""
    key = gvk(doc)
    if key in CRD_MODELS:
        model = crd_model(key).model_validate(doc)
        # the models ignore unknown fields: a field they dropped is a typo or a wrong version
        again = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
        if again != doc:
            raise ValueError(f"{key} {doc['metadata']['name']}: fields the schema lacks")
        return "crd-model"
    if key in CRDS_WITHOUT_SCHEMA:
        return "no-schema"
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    return "schema"


def config_value(overlay: str, key: str) -> str:
    (cm,) = [d for n, d in of_kind(overlay, "ConfigMap").items() if n.startswith("tongda-config")]
    return str(cm["data"][key])


# --- rendering and schemas --------------------------------------------------------------------


def test_overlays() -> None:
    assert OVERLAYS == ["dev", "prod", "prod-hpa", "prod-strimzi", "prod-tls"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay: str) -> None:
    docs = render(overlay)
    how = {validate(doc) for doc in docs}
    assert "schema" in how
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {"tongda-dev" if overlay == "dev" else "tongda"}


def test_crds_without_a_schema_are_listed() -> None:
    """Which custom resources went unvalidated, printed (pytest -s / -rA) and asserted exact."""
    seen = {gvk(d) for o in OVERLAYS for d in render(o)}
    crds = {k for k in seen if not k.startswith(("v1/", "apps/", "batch/", "policy/"))}
    crds -= {k for k in seen if k.split("/")[0].endswith("k8s.io") or k.startswith("autoscaling")}
    assert crds == set(CRD_MODELS) - {"monitoring.coreos.com/v1/PodMonitor"} | set(
        CRDS_WITHOUT_SCHEMA
    )
    for key, why in sorted(CRDS_WITHOUT_SCHEMA.items()):
        print(f"SKIPPED schema validation of {key}: {why}")


def test_validation_notices_mistakes() -> None:
    docs = {d["kind"]: d for d in render("prod")}
    deployment = copy.deepcopy(docs["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    deployment = copy.deepcopy(docs["Deployment"])
    deployment["spec"]["replica"] = 2  # strict: an unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    scaled = copy.deepcopy(docs["ScaledObject"])
    scaled["spec"]["minReplicas"] = 2  # HPA's spelling, not KEDA's
    with pytest.raises(ValueError, match="fields the schema lacks"):
        validate(scaled)
    monitor = copy.deepcopy(docs["ServiceMonitor"])
    monitor["spec"]["endpoints"][0]["interval"] = {"seconds": 15}
    with pytest.raises(ValueError):
        validate(monitor)


# --- what the overlays promise ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_has_a_disruption_budget(overlay: str) -> None:
    budgets = of_kind(overlay, "PodDisruptionBudget")
    for service in SERVICES:
        pdb = budgets[f"tongda-{service}"]
        assert pdb["spec"]["selector"]["matchLabels"] == {
            "app.kubernetes.io/name": f"tongda-{service}"
        }
        assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", ["prod", "prod-strimzi"])
def test_keda_scales_every_service_on_its_consumer_group_lag(overlay: str) -> None:
    partitions = int(config_value(overlay, "TONGDA_KAFKA_TOPIC_PARTITIONS"))
    scaled = of_kind(overlay, "ScaledObject")
    deployments = of_kind(overlay, "Deployment")
    assert set(scaled) == set(deployments)
    for name, obj in scaled.items():
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        # KEDA resolves the env var from the target's container: it must be there
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        sources = [e["configMapRef"]["name"] for e in container["envFrom"]]
        assert any(s.startswith("tongda-config") for s in sources)
        assert meta["bootstrapServersFromEnv"] == "TONGDA_KAFKA_BOOTSTRAP"
        service = name.removeprefix("tongda-")
        if service == "router":
            assert meta["consumerGroup"] == "tongda-router-batch"
            assert "topic" not in meta
        else:
            assert meta["consumerGroup"] == name
            assert meta["topic"] == f"tongda.dispatch.{service}"
    assert "HorizontalPodAutoscaler" not in {d["kind"] for d in render(overlay)}


def test_hpa_overlay_scales_on_cpu_without_keda() -> None:
    partitions = int(config_value("prod-hpa", "TONGDA_KAFKA_TOPIC_PARTITIONS"))
    hpas = of_kind("prod-hpa", "HorizontalPodAutoscaler")
    assert set(hpas) == set(of_kind("prod-hpa", "Deployment"))
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert hpa["spec"]["maxReplicas"] <= partitions
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
    assert not of_kind("prod-hpa", "ScaledObject")


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _reachable_from_outside(overlay: str, pod_labels: dict[str, str]) -> set[str]:
    """The ports of a pod that some NetworkPolicy opens to sources outside the namespace."""
    ports: set[str] = set()
    for policy in of_kind(overlay, "NetworkPolicy").values():
        spec = policy["spec"]
        if not _selects(spec["podSelector"], pod_labels):
            continue
        for rule in spec.get("ingress", []):
            sources = rule.get("from")
            outside = sources is None or any(
                "namespaceSelector" in s or "ipBlock" in s for s in sources
            )
            if outside:
                ports |= {str(p["port"]) for p in rule.get("ports", [{"port": "*"}])}
    return ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_router_api_and_provider_webhooks_are_reachable_from_outside(
    overlay: str,
) -> None:
    policies = of_kind(overlay, "NetworkPolicy")
    deny = policies["tongda-default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert deny["ingress"] == [{"from": [{"podSelector": {}}]}]  # this namespace only
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in render(overlay)
        if d["kind"] in ("Deployment", "Job")
    }
    exposed = {name: _reachable_from_outside(overlay, labels) for name, labels in pods.items()}
    assert {n: p for n, p in exposed.items() if p} == {
        f"tongda-{s}": {"http"} for s in SERVICES
    }
    for name, dep in of_kind(overlay, "Deployment").items():
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert [p["name"] for p in container["ports"]] == ["http"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_come_from_secrets(overlay: str) -> None:
    secret_words = ("TOKEN", "PASSWORD", "SECRET", "HASH_KEY", "SERVICE_ACCOUNT_JSON")
    for name, dep in of_kind(overlay, "Deployment").items():
        spec = dep["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        for env in container.get("env", []):
            if any(w in env["name"] for w in secret_words) and not env["name"].endswith("_FILE"):
                assert "secretKeyRef" in env["valueFrom"], (name, env["name"])
        env = {e["name"]: e for e in container["env"]}
        ref = env["TONGDA_ADDRESS_HASH_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref["name"].startswith("tongda-address-hash-key")  # dev: a generated name
        assert ref["key"] == "address-hash-key"
        service = name.removeprefix("tongda-")
        if service in CHANNELS:
            volumes = {v["name"]: v for v in spec["volumes"]}
            secret = volumes["provider-credentials"]["secret"]
            assert secret["secretName"] == f"tongda-{service}-provider"
            mounts = {m["name"]: m for m in container["volumeMounts"]}
            assert mounts["provider-credentials"]["readOnly"] is True
    for name, cm in of_kind(overlay, "ConfigMap").items():
        for key, value in cm.get("data", {}).items():
            if any(w in key for w in secret_words):
                assert key.endswith("_FILE"), (name, key)
                assert value.startswith("/var/run/secrets/tongda/"), (name, key)


def test_production_channels_name_real_providers() -> None:
    expected = {"sms": "twilio", "voice": "twilio", "email": "smtp", "push": "fcm"}
    deployments = of_kind("prod", "Deployment")
    maps = of_kind("prod", "ConfigMap")
    for channel, provider in expected.items():
        (container,) = deployments[f"tongda-{channel}"]["spec"]["template"]["spec"]["containers"]
        refs = [e["configMapRef"] for e in container["envFrom"]]
        (ref,) = [r for r in refs if r["name"].startswith(f"tongda-{channel}-provider")]
        assert ref["optional"] is True
        assert maps[ref["name"]]["data"]["TONGDA_PROVIDER"] == provider


# --- generated from one source ----------------------------------------------------------------


def test_generated_manifests_are_current() -> None:
    assert manifests.main(["--check"]) == 0


def test_prometheus_rule_holds_the_project_rules() -> None:
    (rule,) = of_kind("prod", "PrometheusRule").values()
    groups = []
    for path in sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.rules.yml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    assert rule["spec"]["groups"] == groups


def test_service_monitor_scrapes_every_service() -> None:
    (monitor,) = of_kind("prod", "ServiceMonitor").values()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["honorLabels"] is True
    services = of_kind("prod", "Service")
    assert set(services) == {f"tongda-{s}" for s in SERVICES}
    for name, svc in services.items():
        assert _selects(monitor["spec"]["selector"], svc["metadata"]["labels"]), name
        assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}


def test_strimzi_topics_replace_the_job() -> None:
    partitions = int(config_value("prod-strimzi", "TONGDA_KAFKA_TOPIC_PARTITIONS"))
    replication = int(config_value("prod-strimzi", "TONGDA_KAFKA_REPLICATION_FACTOR"))
    topics = {d["spec"]["topicName"]: d for d in of_kind("prod-strimzi", "KafkaTopic").values()}
    settings = CommonSettings()
    assert set(topics) == {s.name for s in topic_specs(settings)}
    for name, topic in topics.items():
        spec = topic["spec"]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"]
        assert spec["replicas"] == replication
        if not name.endswith("__assignor-__leader"):
            assert spec["partitions"] == partitions, name
        config = spec["config"]
        if name == settings.topics.profiles:
            assert config["cleanup.policy"] == "compact" and "retention.ms" not in config
        else:
            assert int(config["retention.ms"]) >= 7 * 24 * 3600 * 1000, name
    assert not of_kind("prod-strimzi", "Job")
    assert "tongda-topics" in of_kind("prod", "Job")


def test_tls_overlay_mounts_the_cas_and_takes_credentials_from_secrets() -> None:
    """components/tls: Kafka SASL_SSL and Redis TLS settings whose files are in the mounted
    Secret, for every Deployment and the topics Job; the passwords from Secrets."""
    mount = "/var/run/secrets/tongda-tls/"
    assert config_value("prod-tls", "TONGDA_KAFKA_SECURITY_PROTOCOL") == "SASL_SSL"
    assert config_value("prod-tls", "TONGDA_KAFKA_SASL_MECHANISM") == "SCRAM-SHA-512"
    assert config_value("prod-tls", "TONGDA_REDIS_TLS") == "true"
    for key in ("TONGDA_KAFKA_SSL_CAFILE", "TONGDA_REDIS_SSL_CAFILE"):
        assert config_value("prod-tls", key).startswith(mount), key
    workloads = {**of_kind("prod-tls", "Deployment"), **of_kind("prod-tls", "Job")}
    assert set(workloads) == {f"tongda-{s}" for s in SERVICES} | {"tongda-topics"}
    for name, workload in workloads.items():
        spec = workload["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["tongda-tls"]["secret"]["secretName"] == "tongda-tls", name
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["tongda-tls"] == {
            "name": "tongda-tls",
            "mountPath": mount.rstrip("/"),
            "readOnly": True,
        }, name
        env = {e["name"]: e for e in container["env"]}
        wanted = {"TONGDA_KAFKA_SASL_USERNAME": "tongda-kafka-sasl"}
        wanted["TONGDA_KAFKA_SASL_PASSWORD"] = "tongda-kafka-sasl"
        if name != "tongda-topics":
            wanted["TONGDA_REDIS_USERNAME"] = "tongda-redis-acl"
            wanted["TONGDA_REDIS_PASSWORD"] = "tongda-redis-acl"
        for var, secret in wanted.items():
            assert env[var]["valueFrom"]["secretKeyRef"]["name"] == secret, (name, var)
    with pytest.raises(KeyError):  # plaintext unless the component is used
        config_value("prod", "TONGDA_KAFKA_SECURITY_PROTOCOL")

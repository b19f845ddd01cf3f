"""The generated docs match the code, the docs' examples are valid, the manifests are sound.

* docs/schemas/*.json and the settings tables of docs/configuration.md are what
  `python -m tools.export_schemas` produces now (`--check`), and the check notices a stale,
  missing or unexpected file;
* every example message in README.md and docs/*.md (a ```json block or a `<<'JSON'` heredoc
  carrying a `schema`) is accepted by its model, and broken variants of the sample request
  are refused naming the field;
* every YAML file under deploy/k8s parses, and every Deployment has its probes, resources and
  a locked-down securityContext; both overlays build when kubectl is installed;
* the `make` targets and repository paths README.md mentions exist.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from services.router.plans import load_plans
from shared.config import ChannelSettings, CommonSettings, RouterSettings
from shared.contract.codec import decode
from shared.contract.models import CONTRACT_MODELS, INTERNAL_MODELS, NotificationRequested
from shared.errors import InvalidEvent
from tools import export_schemas
from tools.export_schemas import CONFIG_DOC, SCHEMA_DIR, check, schema_filename, write

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MODELS = {**CONTRACT_MODELS, **INTERNAL_MODELS}
PORTS = {"router": 8080, "sms": 8081, "email": 8082, "push": 8083, "voice": 8084}


# --- generated docs --------------------------------------------------------------------------


def test_generated_docs_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tools.export_schemas", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_schema_file_per_model() -> None:
    for name, model in MODELS.items():
        schema = json.loads((ROOT / SCHEMA_DIR / schema_filename(name)).read_text())
        assert schema["title"] == model.__name__
        assert schema["properties"]["schema"]["const"] == name
    assert len(list((ROOT / SCHEMA_DIR).glob("*.json"))) == len(MODELS)


def _copy_generated(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / SCHEMA_DIR, tmp_path / SCHEMA_DIR)
    shutil.copy(ROOT / CONFIG_DOC, tmp_path / CONFIG_DOC)
    return tmp_path


def test_check_names_stale_missing_and_unexpected_files(tmp_path: Path) -> None:
    root = _copy_generated(tmp_path)
    assert check(root) == []
    stale = root / SCHEMA_DIR / schema_filename("notification.requested/v1")
    stale.write_text(stale.read_text().replace('"maxLength": 128', '"maxLength": 64', 1))
    (root / SCHEMA_DIR / schema_filename("tongda.timer/v1")).unlink()
    (root / SCHEMA_DIR / "old.thing_v0.json").write_text("{}\n")
    doc = root / CONFIG_DOC
    doc.write_text(doc.read_text().replace("`TONGDA_REDIS_URL`", "`TONGDA_REDIS`"))

    found = {(p.kind, p.path.name) for p in check(root)}
    assert found == {
        ("stale", "notification.requested_v1.json"),
        ("missing", "tongda.timer_v1.json"),
        ("unexpected", "old.thing_v0.json"),
        ("stale", "configuration.md"),
    }
    assert export_schemas.main(["--check"], root=root) == 1

    write(root)
    assert check(root) == []
    assert not (root / SCHEMA_DIR / "old.thing_v0.json").exists()


def test_config_doc_keeps_its_prose(tmp_path: Path) -> None:
    root = _copy_generated(tmp_path)
    doc = root / CONFIG_DOC
    doc.write_text(doc.read_text().replace("# Configuration", "# Configuration\n\nHand-written."))
    assert export_schemas.main(["--config-doc"], root=root) == 0
    assert "Hand-written." in doc.read_text()
    assert check(root) == []


def test_every_setting_is_in_the_config_doc_and_no_secret_value_is() -> None:
    doc = (ROOT / CONFIG_DOC).read_text()
    for cls in (CommonSettings, RouterSettings, ChannelSettings):
        for name, info in cls.model_fields.items():
            if name == "topics":
                continue
            assert f"`TONGDA_{name.upper()}`" in doc, name
            if "Secret" in str(info.annotation):
                default = info.get_default(call_default_factory=True)
                secrets = default.values() if isinstance(default, dict) else [default]
                secrets = [s for s in secrets if s is not None]  # unset: nothing to leak
                for secret in secrets:  # a dict of secrets (signing_keys) has none by default
                    assert secret.get_secret_value() not in doc
                assert f"`TONGDA_{name.upper()}` **(secret)**" in doc
    for name in type(CommonSettings().topics).model_fields:
        assert f"`TONGDA_TOPICS__{name.upper()}`" in doc


# --- examples in the docs --------------------------------------------------------------------

_FENCED_JSON = re.compile(r"```json\n(.*?)```", re.S)
_HEREDOC_JSON = re.compile(r"<<'JSON'\n(.*?)\nJSON\n", re.S)


def doc_examples() -> list[tuple[str, dict[str, Any]]]:
    """(where, object) for every JSON example in the docs that names a schema."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for n, block in enumerate(_FENCED_JSON.findall(text) + _HEREDOC_JSON.findall(text)):
            obj = json.loads(block)
            if isinstance(obj, dict) and "schema" in obj:
                found.append((f"{path.relative_to(ROOT)} example {n + 1}", obj))
    return found


def test_the_docs_have_examples_of_the_main_messages() -> None:
    schemas = {obj["schema"] for _, obj in doc_examples()}
    assert {"notification.requested/v1", "customer.profile/v1", "notification.status/v1"} <= (
        schemas
    )


@pytest.mark.parametrize(("where", "obj"), doc_examples(), ids=lambda v: str(v)[:40])
def test_doc_example_is_valid(where: str, obj: dict[str, Any]) -> None:
    assert obj["schema"] in MODELS, f"{where}: unknown schema {obj['schema']}"
    decode(orjson.dumps(obj), MODELS[obj["schema"]])


def sample_request() -> dict[str, Any]:
    for _, obj in doc_examples():
        if obj["schema"] == "notification.requested/v1":
            return copy.deepcopy(obj)
    raise AssertionError("no notification.requested/v1 example in the docs")


def _without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        (lambda o: _without(o, "customer_id"), "invalid_fields", "customer_id"),
        (lambda o: {**o, "priority": "whenever"}, "invalid_fields", "priority"),
        (lambda o: {**o, "occurred_at": "2026-11-22T09:00:00"}, "invalid_fields", "occurred_at"),
        (lambda o: {**o, "id": "x" * 129}, "invalid_fields", "id"),
        (lambda o: {**o, "locale": "not a tag"}, "invalid_fields", "locale"),
        (lambda o: {**o, "contacts": {"phone": "13800138000"}}, "invalid_fields", "contacts.phone"),
        (lambda o: {**o, "schema": "notification.requested/v2"}, "unknown_schema_version", ""),
        (lambda o: _without(o, "schema"), "missing_schema", "schema"),
    ],
)
def test_broken_request_is_refused_naming_the_field(change: Any, code: str, field: str) -> None:
    broken = change(sample_request())
    with pytest.raises(InvalidEvent) as exc:
        decode(orjson.dumps(broken), NotificationRequested)
    assert exc.value.code == code
    assert field in exc.value.detail


def test_unknown_extra_fields_are_accepted() -> None:
    req = {**sample_request(), "added_in_a_later_minor": {"x": 1}}
    assert decode(orjson.dumps(req), NotificationRequested).id == req["id"]


def test_examples_match_the_json_schemas_too() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    for where, obj in doc_examples():
        schema = json.loads((ROOT / SCHEMA_DIR / schema_filename(obj["schema"])).read_text())
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(obj))
        assert not errors, f"{where}: {errors[0].message}"


# --- Kubernetes manifests --------------------------------------------------------------------


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def deployments() -> dict[str, dict[str, Any]]:
    """The base Deployments by service name (tongda-router → router)."""
    return {
        doc["metadata"]["name"].removeprefix("tongda-"): doc
        for path, doc in k8s_documents()
        if doc.get("kind") == "Deployment" and path.parent.name == "base"
    }


def test_every_yaml_file_parses() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path
        for doc in docs:
            assert isinstance(doc, dict) and "apiVersion" in doc, path


def test_a_deployment_service_and_account_per_service() -> None:
    kinds: dict[str, set[str]] = {}
    for path, doc in k8s_documents():
        if path.parent.name == "base" and "metadata" in doc:
            kinds.setdefault(doc["kind"], set()).add(doc["metadata"]["name"])
    names = {f"tongda-{s}" for s in PORTS}
    for kind in ("Deployment", "Service", "ServiceAccount"):
        assert names <= kinds.get(kind, set()), kind
    assert "tongda-topics" in kinds["Job"]


def _drain_timeout_s() -> float:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    for gen in kustomization.get("configMapGenerator", []):
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            if key == "TONGDA_DRAIN_TIMEOUT_S":
                return float(value)
    return float(CommonSettings.model_fields["drain_timeout_s"].default)


@pytest.mark.parametrize("service", sorted(PORTS))
def test_deployment_is_probed_bounded_and_locked_down(service: str) -> None:
    dep = deployments()[service]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    port = PORTS[service]

    assert container["image"] == "tongda:latest"
    assert container["command"] == ["python", "-m", f"services.{service}"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["TONGDA_HTTP_PORT"]["value"] == str(port)

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", port), probe

    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind

    pod_sc, sc = spec.get("securityContext", {}), container["securityContext"]
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]

    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]

    assert spec["terminationGracePeriodSeconds"] > _drain_timeout_s() + 10
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_router_reads_its_token_from_a_secret_and_nothing_else_does() -> None:
    for service, dep in deployments().items():
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        if service == "router":
            assert env["TONGDA_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
            assert "value" not in env["TONGDA_API_TOKEN"]
        else:
            assert "TONGDA_API_TOKEN" not in env


def test_shared_config_holds_no_per_service_setting() -> None:
    for path, doc in k8s_documents():
        if doc.get("kind") != "Kustomization":
            continue
        for gen in doc.get("configMapGenerator", []):
            keys = {lit.partition("=")[0] for lit in gen.get("literals", [])}
            assert not keys & {"TONGDA_HTTP_PORT", "TONGDA_CONSUMER_GROUP", "TONGDA_API_TOKEN"}
            assert all(k.startswith("TONGDA_") for k in keys), path


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_overlay_builds(overlay: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    deps = [d for d in built if d["kind"] == "Deployment"]
    assert len(deps) == len(PORTS)
    assert all(d["metadata"]["namespace"].startswith("tongda") for d in deps)


# --- README ----------------------------------------------------------------------------------


def test_readme_make_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-zA-Z_-]+):", makefile, re.M))
    mentioned = set(re.findall(r"`make ([a-z-]+)", (ROOT / "README.md").read_text()))
    assert {"demo", "test", "up", "down", "bench", "test-all"} <= mentioned
    assert mentioned <= targets, mentioned - targets


def test_readme_plan_example_loads(tmp_path: Path) -> None:
    (block,) = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    path = tmp_path / "plans.yaml"
    path.write_text(block)
    book = load_plans(path)
    assert book.plans["overdue_notice"].steps[1].target == "backup_contacts"


def test_readme_links_point_at_files() -> None:
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), target

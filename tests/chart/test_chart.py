"""The Helm chart: lint, render with default and all-options values, schema rejects bad values.

No cluster: these run `helm lint` and `helm template` only (test_chart_cluster.py validates the
rendered objects against the real API server).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.chart.helmutil import ALL_VALUES, CHART, REPO, find, helm, one, render


@pytest.mark.parametrize("values", [[], ["-f", str(ALL_VALUES)]], ids=["default", "all-options"])
def test_helm_lint_is_clean(values: list[str]) -> None:
    p = helm("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in p.stdout
    assert "[WARNING]" not in p.stdout and "[ERROR]" not in p.stdout, p.stdout


def test_default_render_is_the_production_shape() -> None:
    objs = render()
    kinds = sorted(o["kind"] for o in objs)
    # External S3 and a cluster-provided RuntimeClass by default: no MinIO, no RuntimeClass, no Secret.
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    dep = one(objs, "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["command"] == ["codeground", "operator", "run"]
    assert c["image"] == "ghcr.io/codeground/operator:0.1.0"  # tag defaults to appVersion
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["args"] == ["--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz", "--metrics-port=9090"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["CODEGROUND_TRAINER_IMAGE"] == "ghcr.io/codeground/trainer:0.1.0"
    assert env["CODEGROUND_SANDBOX_IMAGE"] == "ghcr.io/codeground/sandbox:0.1.0"
    assert one(objs, "ClusterRoleBinding")["subjects"][0]["name"] == pod["serviceAccountName"]


def test_all_options_render() -> None:
    objs = render("-f", str(ALL_VALUES))
    rc = one(objs, "RuntimeClass", "gvisor")
    assert rc["handler"] == "runsc"
    assert rc["scheduling"]["nodeSelector"] == {"sandbox.gke.io/runtime": "gvisor"}
    # watchNamespace: the operator's rules become a Role there, and nothing is cluster-wide.
    assert one(objs, "Role")["metadata"]["namespace"] == "team-a"
    assert one(objs, "RoleBinding")["metadata"]["namespace"] == "team-a"
    assert not find(objs, "ClusterRole") and not find(objs, "ClusterRoleBinding")
    dep = one(objs, "Deployment", "codeground-all")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["CODEGROUND_TRAINER_IMAGE"] == "registry.example/codeground/trainer:1.2.3"
    assert c["args"] == ["--namespace=team-a", "--liveness=http://0.0.0.0:8181/healthz", "--metrics-port=9191",
                         "--verbose", "--verbose"]  # extraArgs come last
    assert dep["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    secret = one(objs, "Secret", "codeground-all-s3")
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    sandbox = one(objs, "Sandbox", "interpreter")
    assert sandbox["spec"]["runtimeClassName"] == "gvisor" and sandbox["spec"]["maxReplicas"] == 4
    # Optional MinIO: server, its credentials Secret, Service, PVC and the bucket Job.
    for kind in ("Deployment", "Secret", "Service", "PersistentVolumeClaim"):
        one(objs, kind, "codeground-all-minio")
    one(objs, "Job", "codeground-all-minio-bucket")


def test_an_existing_secret_wins_over_creating_one() -> None:
    objs = render("-f", str(ALL_VALUES), "--set", "artifacts.credentials.existingSecret=my-s3")
    assert not find(objs, "Secret", "codeground-all-s3")
    # (NOTES.txt, which tells runs the endpoint and Secret to use, is checked on a real install in tests/e2e.)


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("bogus=1", "additional properties 'bogus' not allowed"),
        ("operator.bogus=1", "additional properties 'bogus' not allowed"),
        ("images.trainer.registry=x", "additional properties 'registry' not allowed"),
        ("operator.replicas=2", "/operator/replicas"),
        ("operator.replicas=two", "/operator/replicas"),
        ("operator.verbose=loud", "/operator/verbose"),
        ("images.operator.pullPolicy=Sometimes", "/images/operator/pullPolicy"),
        ("runtimeClass.create=maybe", "/runtimeClass/create"),
        ("operator.metrics.port=70000", "/operator/metrics/port"),
        ("operator.watchNamespace=Team_A", "/operator/watchNamespace"),
        ("images.trainer.pullPolicy=Always", "additional properties 'pullPolicy' not allowed"),
        ("operator.resources.requests.cpu=lots", "/operator/resources/requests/cpu"),
        ("artifacts.endpoint=ftp://x", "/artifacts/endpoint"),
        ("sandbox.limits.maxSessions=0", "/sandbox/limits/maxSessions"),
        ("minio.bucket=Bad_Bucket", "/minio/bucket"),
    ],
)
def test_schema_rejects_unknown_and_mistyped_values(setting: str, complaint: str) -> None:
    p = helm("template", "cg", str(CHART), "--kube-version", "1.35.4", "--set", setting, check=False)
    assert p.returncode != 0, f"--set {setting} was accepted"
    assert complaint in p.stderr, p.stderr


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ("minio.enabled=true", "minio.rootUser is required"),
        ("minio.enabled=true,minio.rootUser=u,minio.rootPassword=short", "at least 8 characters"),
        ("artifacts.credentials.create=true", "artifacts.credentials.accessKeyId is required"),
        ("serviceAccount.create=false", "serviceAccount.name is required"),
    ],
)
def test_missing_required_values_say_what_to_set(settings: str, complaint: str) -> None:
    p = helm("template", "cg", str(CHART), "--kube-version", "1.35.4", "--set", settings, check=False)
    assert p.returncode != 0 and complaint in p.stderr, p.stderr


def test_every_object_is_labelled_and_namespaced() -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "RuntimeClass"}
    for o in render("-f", str(ALL_VALUES)):
        labels = o["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == "cg", o["metadata"]["name"]
        assert labels.get("app.kubernetes.io/managed-by") == "Helm"
        if o["kind"] not in cluster_scoped:
            assert o["metadata"].get("namespace"), f"{o['kind']} {o['metadata']['name']} has no namespace"


def test_values_schema_forbids_unknown_keys_everywhere() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: dict, path: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} allows unknown keys"
            for name, sub in node["properties"].items():
                walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "values")


def test_chart_crds_are_the_generated_ones() -> None:
    """The chart ships exactly the CRDs `codeground crds` generates (never hand-edited copies)."""
    from codeground.pipeline.crdgen import render_crds

    generated = render_crds()
    shipped = {p.name: p.read_text() for p in sorted((CHART / "crds").glob("*.yaml"))}
    assert shipped == generated
    assert shipped == {p.name: p.read_text() for p in sorted((REPO / "crds").glob("*.yaml"))}


def test_operator_rbac_matches_operator_rbac_yaml() -> None:
    """The chart's rules are operator/rbac.yaml's (the least the operator needs), nothing more."""
    (declared,) = [d for d in yaml.safe_load_all((REPO / "operator" / "rbac.yaml").read_text()) if d]
    want = declared["rules"]
    assert one(render(), "ClusterRole")["rules"] == want
    assert one(render("--set", "operator.watchNamespace=a"), "Role")["rules"] == want
    assert _normalise(want)  # not vacuous


def _normalise(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule.get("apiGroups", [""])
        for r in rule.get("resources", [])
        for v in rule.get("verbs", [])
    }


def test_docs_and_values_name_the_crd_upgrade_path() -> None:
    cmd = "kubectl apply --server-side --force-conflicts -f charts/codeground/crds/"
    assert cmd in (CHART / "values.yaml").read_text()
    docs = REPO / "docs" / "cluster.md"
    if docs.exists():
        assert cmd in docs.read_text()


def test_templates_dir_holds_no_crds() -> None:
    """CRDs live only in crds/ (helm installs them first); a templated copy would fight helm over them."""
    for p in Path(CHART / "templates").glob("*.yaml"):
        assert "CustomResourceDefinition" not in p.read_text(), p

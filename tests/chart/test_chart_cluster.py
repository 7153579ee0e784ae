"""The chart's rendered objects against the real API server's schemas (the test bed's kube-apiserver).

`kubectl apply --dry-run=server` runs every object through the API server's decoding with strict
field validation, defaulting, admission (Pod Security "restricted" included) and the CRDs' OpenAPI
and CEL rules, without persisting it.
"""

from __future__ import annotations

import pytest

from tests.chart.helmutil import ALL_VALUES, CHART, template_text

pytestmark = pytest.mark.cluster


@pytest.fixture
def crds_applied(kube_cluster) -> None:
    # What the chart's crds/ gives on first install; server-side so that reruns and other tests agree.
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                         "crd/trainingruns.codeground.dev", "crd/sandboxes.codeground.dev")


@pytest.mark.parametrize("values", [[], ["-f", str(ALL_VALUES)]], ids=["default", "all-options"])
def test_rendered_chart_passes_server_side_validation(kube_cluster, kube_namespace, crds_applied, values) -> None:
    # watchNamespace must name a namespace that exists for its Role to validate: use the test's own.
    extra = ["--set", f"operator.watchNamespace={kube_namespace}"] if values else []
    manifest = template_text(*values, *extra, namespace=kube_namespace)
    # Pod Security Admission warns about workloads whose pods would break the "restricted" profile.
    kube_cluster.kubectl("label", "namespace", kube_namespace, "pod-security.kubernetes.io/warn=restricted",
                         "pod-security.kubernetes.io/enforce=restricted")
    p = kube_cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=manifest, check=False)
    assert p.returncode == 0, p.stderr
    assert "PodSecurity" not in p.stderr, p.stderr
    applied = p.stdout
    assert "deployment.apps/" in applied
    if not values:
        assert "clusterrole.rbac.authorization.k8s.io/" in applied
    else:
        assert "role.rbac.authorization.k8s.io/" in applied
        assert "runtimeclass.node.k8s.io/gvisor" in applied
        assert "sandbox.codeground.dev/interpreter" in applied


def test_server_rejects_what_the_schema_would_not_catch(kube_cluster, kube_namespace, crds_applied) -> None:
    """A Sandbox the chart renders is checked by the CRD's CEL rules too (replicas ≤ maxReplicas)."""
    manifest = template_text("--set", "sandbox.create=true,sandbox.replicas=5,sandbox.maxReplicas=2",
                             namespace=kube_namespace)
    p = kube_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert p.returncode != 0 and "replicas must not exceed maxReplicas" in p.stderr, p.stderr

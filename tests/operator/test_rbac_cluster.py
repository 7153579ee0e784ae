"""operator/rbac.yaml is enough: the operator runs a Sandbox and a run to success with only those rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.operator.cluster import REPO, Cluster, OperatorProcess, crd_documents, wait_for

pytestmark = pytest.mark.cluster


def _token_kubeconfig(kube_cluster, namespace: str, path: Path) -> Path:
    rules = yaml.safe_load((REPO / "operator" / "rbac.yaml").read_text())["rules"]
    name = f"codeground-operator-{namespace}"
    kube_cluster.kubectl("create", "serviceaccount", "codeground-operator", "-n", namespace)
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": "codeground-operator", "namespace": namespace}]},
    ]}))
    token = kube_cluster.kubectl("create", "token", "codeground-operator", "-n", namespace, "--duration=1h").stdout.strip()
    cfg = yaml.safe_load(Path(kube_cluster.kubeconfig).read_text())
    for user in cfg["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_operator_needs_no_more_than_rbac_yaml(kube_cluster, kube_namespace, tmp_path):
    for doc in crd_documents():
        kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(doc))
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "gvisor"}, "handler": "runsc"}))
    kubeconfig = _token_kubeconfig(kube_cluster, kube_namespace, tmp_path / "kubeconfig")
    op = OperatorProcess(kubeconfig, tmp_path / "operator.log")
    # --namespace mode would need the same rules as a Role; watch only this test's namespace here so
    # another module's operator never races this one.
    op.start(namespace=kube_namespace)
    k = Cluster(kube_cluster, kube_namespace)
    try:
        k.apply({"apiVersion": "codeground.dev/v1alpha1", "kind": "Sandbox", "metadata": {"name": "interpreter"},
                 "spec": {"replicas": 1, "maxReplicas": 2}})
        k.apply({"apiVersion": "codeground.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "rbac"},
                 "spec": {"model": {"name": "m"}, "datasets": [{"name": "t", "source": "builtin:arith_test"}],
                          "sandbox": {"name": "interpreter"}, "ttlSecondsAfterFinished": 0,
                          "stages": [{"name": "sft", "type": "sft", "resources": {"gpus": 1, "nodes": 2}},
                                     {"name": "evaluate", "type": "evaluate", "evaluate": {"benchmarks": ["t"]}}]}})
        k.wait_job("rbac-sft-1")
        k.finish("rbac-sft-1", count=2)
        k.wait_job("rbac-evaluate-1")
        k.kc.kubectl("patch", "trainingrun", "rbac", "-n", kube_namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
        wait_for(lambda: k.batch.read_namespaced_job("rbac-evaluate-1", kube_namespace).spec.suspend, what="suspended")
        k.kc.kubectl("patch", "trainingrun", "rbac", "-n", kube_namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
        k.finish("rbac-evaluate-1")
        wait_for(lambda: k.status("rbac").get("phase") == "Succeeded", what="Succeeded")
        wait_for(lambda: not k.jobs("rbac"), 60, what="TTL cleanup")
        wait_for(lambda: (s := k.custom.get_namespaced_custom_object(
            "codeground.dev", "v1alpha1", kube_namespace, "sandboxes", "interpreter").get("status")) and s.get("readyReplicas"),
            what="sandbox status")
        assert "RunSucceeded" in k.events("rbac")
    finally:
        op.stop()
    log = op.log()
    assert "403" not in log and "Forbidden" not in log and "forbidden" not in log, log[-3000:]

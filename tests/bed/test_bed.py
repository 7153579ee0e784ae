"""Tests of the test bed itself: the real control plane, kwok GPU nodes, the harness kubelet, MinIO.

Run: `pytest -m cluster tests/bed` (builds the binaries on first use).
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from codeground.operator.testbed import ControlPlane, _alive, add_cli

REPO = Path(__file__).resolve().parents[2]

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.testbed.codeground.dev}
spec:
  group: testbed.codeground.dev
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer, minimum: 1}}}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def get(kube: Any, ns: str, *what: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(kube.kubectl("get", *what, "-n", ns, "-o", "json").stdout)
    return out


def gpu_job(name: str, gpus: int, **pod_extra: Any) -> str:
    pod = {
        "restartPolicy": "Never",
        "containers": [{
            "name": "main", "image": "codeground/testbed:none", "command": ["true"],
            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
        }],
        **pod_extra,
    }
    return json.dumps({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"job": name}}, "spec": pod}},
    })


def job_pod(kube: Any, ns: str, job: str, phase: str | None = None) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        pods = get(kube, ns, "pods", "-l", f"job={job}")["items"]
        return next((p for p in pods if phase is None or p["status"].get("phase") == phase), None)
    return wait_for(find, 60, f"pod of job {job} in phase {phase}")


pytestmark = pytest.mark.cluster


def test_kubectl_apply_of_a_crd_and_its_objects(kube_cluster: Any, kube_namespace: str) -> None:
    kube_cluster.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    kube_cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.testbed.codeground.dev", "--timeout=60s")
    widget = {"apiVersion": "testbed.codeground.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}}
    kube_cluster.kubectl("apply", "-n", kube_namespace, "-f", "-", input=json.dumps(widget))
    assert get(kube_cluster, kube_namespace, "widget", "w")["spec"]["size"] == 3
    bad = {**widget, "metadata": {"name": "bad"}, "spec": {"size": 0}}
    rejected = kube_cluster.kubectl("apply", "-n", kube_namespace, "-f", "-", input=json.dumps(bad), check=False)
    assert rejected.returncode != 0 and "spec.size" in rejected.stderr


@pytest.mark.parametrize("crd", sorted((REPO / "crds").glob("*.yaml")), ids=lambda p: p.name)
def test_project_crds_apply(kube_cluster: Any, crd: Path) -> None:
    """The generated CRDs in crds/ are accepted by a real API server and become Established."""
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    name = json.loads(kube_cluster.kubectl("create", "--dry-run=client", "-o", "json", "-f", str(crd)).stdout)["metadata"]["name"]
    kube_cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


def test_job_with_8_gpus_is_scheduled_on_a_kwok_gpu_node_and_succeeds(kube_cluster: Any, kube_namespace: str) -> None:
    ns = kube_namespace
    kube_cluster.kubectl("apply", "-n", ns, "-f", "-", input=gpu_job("eight", 8))
    pod = job_pod(kube_cluster, ns, "eight", "Running")
    assert pod["spec"]["nodeName"] in kube_cluster.gpu_nodes
    node = get(kube_cluster, "default", "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    # kwok does not finish Job pods by itself here: the test decides.
    time.sleep(1)
    assert get(kube_cluster, ns, "job", "eight")["status"].get("succeeded") is None
    kube_cluster.finish_pod(ns, pod["metadata"]["name"], "Succeeded")
    kube_cluster.kubectl("wait", "-n", ns, "--for=condition=Complete", "job/eight", "--timeout=60s")


def test_job_with_9_gpus_stays_pending(kube_cluster: Any, kube_namespace: str) -> None:
    ns = kube_namespace
    kube_cluster.kubectl("apply", "-n", ns, "-f", "-", input=gpu_job("nine", 9))

    def unschedulable() -> dict[str, Any] | None:
        pod = job_pod(kube_cluster, ns, "nine")
        conds = {c["type"]: c for c in pod["status"].get("conditions", [])}
        return pod if conds.get("PodScheduled", {}).get("reason") == "Unschedulable" else None

    pod = wait_for(unschedulable, 60, "the scheduler to mark the 9-GPU pod Unschedulable")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    assert "nvidia.com/gpu" in pod["status"]["conditions"][0]["message"]


def test_pod_can_be_driven_to_failed(kube_cluster: Any, kube_namespace: str) -> None:
    ns = kube_namespace
    kube_cluster.kubectl("apply", "-n", ns, "-f", "-", input=gpu_job("fails", 1))
    pod = job_pod(kube_cluster, ns, "fails", "Running")
    kube_cluster.finish_pod(ns, pod["metadata"]["name"], "Failed", exit_code=3)
    kube_cluster.kubectl("wait", "-n", ns, "--for=condition=Failed", "job/fails", "--timeout=60s")
    pod = get(kube_cluster, ns, "pod", pod["metadata"]["name"])
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


SCRIPT = """
import os, pathlib, sys
text = pathlib.Path('/etc/greeting/greeting.txt').read_text()
pathlib.Path('/out/result.txt').write_text(text.upper() + os.environ['SUFFIX'])
print('read', text, 'token', pathlib.Path('/secret/token').read_text(), 'pod', os.environ['POD'])
sys.exit(int(os.environ['EXIT']))
"""


def harness_pod(name: str, exit_code: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"harness": "yes"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": "codeground/testbed:none",
                "command": ["python", "-c", SCRIPT],
                "env": [
                    {"name": "EXIT", "value": str(exit_code)},
                    {"name": "SUFFIX", "valueFrom": {"configMapKeyRef": {"name": "greeting", "key": "suffix"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "volumeMounts": [
                    {"name": "greeting", "mountPath": "/etc/greeting"},
                    {"name": "secret", "mountPath": "/secret"},
                    {"name": "out", "mountPath": "/out"},
                ],
            }],
            "volumes": [
                {"name": "greeting", "configMap": {"name": "greeting"}},
                {"name": "secret", "secret": {"secretName": "token"}},
                {"name": "out", "persistentVolumeClaim": {"claimName": "results"}},
            ],
        },
    }


def test_harness_kubelet_runs_the_pods_command(kube_cluster: Any, kube_namespace: str) -> None:
    ns = kube_namespace
    kube_cluster.kubectl("create", "configmap", "greeting", "-n", ns,
                         "--from-literal=greeting.txt=hello", "--from-literal=suffix=!")
    kube_cluster.kubectl("create", "secret", "generic", "token", "-n", ns, "--from-literal=token=s3cr3t")
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "results"},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    items = [pvc, harness_pod("ok", 0), harness_pod("bad", 3)]
    kube_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    with kube_cluster.kubelet(ns, label_selector="harness=yes") as kubelet:
        def phases() -> dict[str, str] | None:
            got = {p["metadata"]["name"]: p["status"].get("phase") for p in get(kube_cluster, ns, "pods")["items"]}
            return got if got.get("ok") == "Succeeded" and got.get("bad") == "Failed" else None
        wait_for(phases, 60, "pods ok=Succeeded, bad=Failed")
    assert "read hello token s3cr3t pod ok" in kubelet.runs["ok"].output()
    results = kube_cluster.workdir / "kubelet" / "pvc" / ns / "results" / "result.txt"
    assert results.read_text() == "HELLO!"
    bad = get(kube_cluster, ns, "pod", "bad")["status"]["containerStatuses"][0]["state"]["terminated"]
    assert bad["exitCode"] == 3 and "read hello" in bad["message"]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_second_cluster_starts_beside_the_first_and_stops_without_leftovers(kube_cluster: Any, tmp_path: Path) -> None:
    with ControlPlane(kube_cluster.bin_dir, tmp_path / "second", gpu_nodes=1, cpu_nodes=0) as cp:
        procs = dict(cp._sup.procs)
        port = int(cp.server.rsplit(":", 1)[1])
        assert len(procs) == 5 and all(_alive(p["pid"]) for p in procs.values())
        assert cp.kubectl("get", "node", "kwok-gpu-0").returncode == 0
    assert not any(_alive(p["pid"]) for p in procs.values())
    assert not _port_open(port)


def test_dev_cluster_up_status_down(
    kube_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))

    def dev(*argv: str) -> int:
        args = parser.parse_args(["dev", "cluster", *argv, "--dir", str(tmp_path / "dev"), "--gpu-nodes", "1"])
        return int(args.func(args))

    monkeypatch.setenv("CODEGROUND_BIN_DIR", str(kube_cluster.bin_dir))
    assert dev("up") == 0
    kubeconfig = capsys.readouterr().out.strip().splitlines()[-1]
    state = json.loads((tmp_path / "dev" / "state.json").read_text())
    assert kubeconfig == state["kubeconfig"] and Path(kubeconfig).exists()
    assert dev("status") == 0
    assert dev("down") == 0
    assert not any(_alive(p["pid"]) for p in state["processes"].values())
    assert dev("status") == 1


def test_helm_installs_a_chart_with_a_kube_version_constraint(kube_cluster: Any, kube_namespace: str, tmp_path: Path) -> None:
    """helm reads the server's version (set by the build's -X flags) and installs into the bed."""
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: tiny}\ndata: {release: {{ .Release.Name | quote }}}\n"
    )
    kube_cluster.helm("install", "t1", str(chart), "-n", kube_namespace, "--wait", "--timeout=60s")
    assert get(kube_cluster, kube_namespace, "configmap", "tiny")["data"]["release"] == "t1"
    server = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert server["gitVersion"].startswith("v1.35.")

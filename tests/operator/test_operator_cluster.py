"""The operator on the real control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok).

What a user notices: applying a TrainingRun makes Jobs with the right GPU requests that land on GPU
nodes; finishing Jobs walks the stages to Succeeded; a failing stage is retried then fails the run;
suspend/resume; deleting a run deletes its children; restarting the operator duplicates nothing;
bad specs are refused by the API server naming the field; a Sandbox becomes a hardened pool that
follows `kubectl scale` and the running stage's demand; a run waits for a missing Sandbox.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.operator.cluster import Cluster, OperatorProcess, crd_documents, wait_for

pytestmark = pytest.mark.cluster

RUN: dict[str, Any] = {
    "apiVersion": "codeground.dev/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "demo"},
    "spec": {
        "model": {"name": "Qwen/Qwen3-0.6B"},
        "datasets": [{"name": "arith", "source": "builtin:arith_train"}, {"name": "test", "source": "builtin:arith_test"}],
        "sandbox": {"name": "interpreter"},
        "stages": [
            {"name": "sft", "type": "sft", "resources": {"gpus": 8, "cpu": "8", "memory": "64Gi"}},
            {"name": "grpo", "type": "grpo", "resources": {"gpus": 8, "cpu": "8", "memory": "64Gi", "nodes": 2},
             "grpo": {"dataset": "arith", "promptsPerStep": 32, "numGenerations": 16,
                      "curriculum": [{"steps": 10, "maxLength": 1024, "maxToolCalls": 4}]}},
            {"name": "evaluate", "type": "evaluate", "resources": {"gpus": 1},
             "evaluate": {"benchmarks": ["test"]}},
        ],
        "artifacts": {"uri": "s3://bucket/runs"},
        "backoffLimit": 1,
    },
}
SANDBOX: dict[str, Any] = {
    "apiVersion": "codeground.dev/v1alpha1", "kind": "Sandbox", "metadata": {"name": "interpreter"},
    "spec": {"replicas": 1, "maxReplicas": 4, "resources": {"cpu": "1", "memory": "1Gi"}, "limits": {"maxSessions": 64}},
}


def run_doc(name: str = "demo", stages: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(RUN)
    doc["metadata"]["name"] = name
    if stages is not None:
        doc["spec"]["stages"] = [s for s in doc["spec"]["stages"] if s["name"] in stages]
    doc["spec"].update(spec)
    return doc


def result(stage: str) -> dict[str, Any]:
    return {"artifactURI": f"s3://bucket/runs/demo/{stage}/manifest.json", "metrics": {"score": 1.0}}


@pytest.fixture(scope="module")
def operator(kube_cluster, tmp_path_factory) -> Iterator[OperatorProcess]:
    for doc in crd_documents():
        kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(doc))
    for doc in crd_documents():
        kube_cluster.kubectl("wait", "--for=condition=Established", f"crd/{doc['metadata']['name']}", "--timeout=30s")
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "gvisor"}, "handler": "runsc"}))
    proc = OperatorProcess(kube_cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log").start()
    yield proc
    proc.stop()
    print(proc.log()[-5000:])


@pytest.fixture
def k(kube_cluster, kube_namespace, operator) -> Iterator[Cluster]:
    c = Cluster(kube_cluster, kube_namespace)
    yield c
    # leave no GPU-holding pods for the next test
    kube_cluster.kubectl("delete", "trainingruns,sandboxes", "--all", "-n", kube_namespace, "--wait=false", check=False)
    kube_cluster.kubectl("delete", "jobs", "--all", "-n", kube_namespace, "--wait=false", check=False)


def test_apply_creates_a_gpu_job_on_a_gpu_node_and_stages_walk_to_success(k):
    k.apply(SANDBOX)
    k.apply(run_doc())
    job = k.wait_job("demo-sft-1")
    limits = job.spec.template.spec.containers[0].resources.limits
    assert limits["nvidia.com/gpu"] == "8"
    pod = k.running_pods("demo-sft-1")[0]
    assert pod.spec.node_name.startswith("kwok-gpu-")
    wait_for(lambda: k.status("demo").get("phase") == "Running", what="phase Running")
    table = k.kc.kubectl("get", "trainingrun", "demo", "-n", k.ns).stdout
    assert "STAGE" in table and "sft" in table and "Running" in table

    k.finish("demo-sft-1", message=result("sft"))
    grpo = k.wait_job("demo-grpo-1")
    assert grpo.spec.completion_mode == "Indexed" and grpo.spec.parallelism == 2
    # the pool grows for GRPO's 32 x 16 sessions (8 replicas at 64 each), capped at maxReplicas 4
    wait_for(lambda: k.apps.read_namespaced_deployment("interpreter", k.ns).spec.replicas == 4, what="pool at 4")
    pods = k.running_pods("demo-grpo-1", count=2)
    k.core.patch_namespaced_pod(pods[0].metadata.name, k.ns, {"metadata": {"annotations": {
        "codeground.dev/progress": json.dumps({"progress": "12/80", "metrics": {"reward": 0.42}})}}})
    wait_for(lambda: k.status("demo").get("progress") == "12/80", what="progress in status")
    table = k.kc.kubectl("get", "trainingrun", "demo", "-n", k.ns).stdout
    assert "12/80" in table and "0.42" in table

    k.finish("demo-grpo-1", message=result("grpo"), count=2)
    k.wait_job("demo-evaluate-1")
    wait_for(lambda: k.apps.read_namespaced_deployment("interpreter", k.ns).spec.replicas == 1, what="pool back at 1")
    k.finish("demo-evaluate-1", message=result("evaluate"))
    k.kc.kubectl("wait", "--for=condition=Succeeded", "trainingrun/demo", "-n", k.ns, "--timeout=30s")
    st = k.status("demo")
    assert st["phase"] == "Succeeded" and st["observedGeneration"] == 1
    assert [s["phase"] for s in st["stages"]] == ["Succeeded"] * 3
    assert st["stages"][0]["artifactURI"] == "s3://bucket/runs/demo/sft/manifest.json"
    assert st["stages"][0]["metrics"] == {"score": 1.0}
    assert set(k.jobs("demo")) == {"demo-sft-1", "demo-grpo-1", "demo-evaluate-1"}
    events = wait_for(lambda: (e := k.events("demo")) and "RunSucceeded" in e and e, what="events")
    assert {"StageStarted", "StageSucceeded", "RunSucceeded"} <= set(events)


def test_failed_job_is_retried_then_fails_the_run(k):
    k.apply(run_doc(stages=["sft"], backoffLimit=1))
    k.wait_job("demo-sft-1")
    k.finish("demo-sft-1", "Failed", {"error": "CUDA out of memory"})
    k.wait_job("demo-sft-2", timeout=30)
    k.finish("demo-sft-2", "Failed", {"error": "CUDA out of memory"})
    wait_for(lambda: k.status("demo").get("phase") == "Failed", what="phase Failed")
    failed = k.condition("demo", "Failed")
    assert failed["status"] == "True" and failed["reason"] == "StageFailed"
    assert "CUDA out of memory" in failed["message"]
    assert set(k.jobs("demo")) == {"demo-sft-1", "demo-sft-2"}
    assert wait_for(lambda: {"StageRetrying", "StageFailed", "RunFailed"} <= set(k.events("demo")), what="events")


def test_permanent_failure_is_not_retried(k):
    k.apply(run_doc(stages=["sft"], backoffLimit=3))
    k.wait_job("demo-sft-1")
    k.finish("demo-sft-1", "Failed", {"error": "spec.stages[0]: bad", "permanent": True}, exit_code=2)
    wait_for(lambda: k.status("demo").get("phase") == "Failed", what="phase Failed")
    assert set(k.jobs("demo")) == {"demo-sft-1"}


def test_suspend_stops_the_job_and_resume_continues_it(k):
    k.apply(run_doc(stages=["sft"]))
    k.wait_job("demo-sft-1")
    k.running_pods("demo-sft-1")
    k.kc.kubectl("patch", "trainingrun", "demo", "-n", k.ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for(lambda: k.batch.read_namespaced_job("demo-sft-1", k.ns).spec.suspend, what="Job suspended")
    wait_for(lambda: not k.core.list_namespaced_pod(k.ns, label_selector="job-name=demo-sft-1").items, what="pods gone")
    wait_for(lambda: k.status("demo").get("phase") == "Suspended", what="phase Suspended")
    assert k.condition("demo", "Suspended")["status"] == "True"
    k.kc.kubectl("patch", "trainingrun", "demo", "-n", k.ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    k.running_pods("demo-sft-1")
    wait_for(lambda: k.status("demo").get("phase") == "Running", what="phase Running")
    assert set(k.jobs("demo")) == {"demo-sft-1"}  # same attempt resumed, not a new one
    k.finish("demo-sft-1", message=result("sft"))
    wait_for(lambda: k.status("demo").get("phase") == "Succeeded", what="phase Succeeded")


def test_deleting_a_run_deletes_its_children(k):
    k.apply(run_doc(stages=["sft"]))
    k.wait_job("demo-sft-1")
    assert k.core.read_namespaced_config_map("demo-spec", k.ns)
    k.kc.kubectl("delete", "trainingrun", "demo", "-n", k.ns)
    wait_for(lambda: not k.jobs("demo"), 60, what="Jobs deleted by the garbage collector")
    wait_for(lambda: not k.core.list_namespaced_config_map(k.ns, label_selector="codeground.dev/run=demo").items,
             60, what="ConfigMap deleted")


def test_restarting_the_operator_mid_run_creates_no_duplicates(k, operator):
    k.apply(run_doc(stages=["sft", "evaluate"], sandbox={}))
    k.wait_job("demo-sft-1")
    operator.kill()
    k.finish("demo-sft-1", message=result("sft"))  # finishes while no operator runs
    operator.start()
    k.wait_job("demo-evaluate-1", timeout=60)
    operator.kill()
    operator.start()
    k.finish("demo-evaluate-1", message=result("evaluate"))
    wait_for(lambda: k.status("demo").get("phase") == "Succeeded", 60, what="phase Succeeded")
    assert set(k.jobs("demo")) == {"demo-sft-1", "demo-evaluate-1"}
    started = [r for r in k.events("demo") if r == "StageStarted"]
    assert len(started) <= 2  # an Event may be lost in a crash window, never doubled by adoption


def test_a_run_naming_a_missing_sandbox_waits_then_starts(k):
    k.apply(run_doc(stages=["evaluate"]))
    wait_for(lambda: (c := k.condition("demo", "Ready")) and c["reason"] == "SandboxNotFound", what="SandboxNotFound")
    assert k.status("demo")["phase"] == "Pending" and not k.jobs("demo")
    k.apply(SANDBOX)
    k.wait_job("demo-evaluate-1")


def test_sandbox_pool_is_hardened_scalable_and_reports_status(k):
    k.apply(SANDBOX)
    dep = k.wait_for_deployment = wait_for(lambda: k.apps.read_namespaced_deployment("interpreter", k.ns), what="Deployment")
    pod = dep.spec.template.spec
    assert pod.runtime_class_name == "gvisor" and pod.automount_service_account_token is False
    c = pod.containers[0]
    assert c.security_context.read_only_root_filesystem and c.security_context.capabilities.drop == ["ALL"]
    assert c.resources.requests == c.resources.limits
    svc = k.core.read_namespaced_service("interpreter", k.ns)
    assert svc.spec.cluster_ip == "None"
    k.kc.kubectl("get", "networkpolicy", "interpreter", "-n", k.ns)
    st = wait_for(lambda: (s := k.custom.get_namespaced_custom_object(
        "codeground.dev", "v1alpha1", k.ns, "sandboxes", "interpreter").get("status")) and s.get("readyReplicas") == 1 and s,
        what="sandbox ready")
    assert st["endpoint"] == f"http://interpreter.{k.ns}.svc:8080"
    assert "codeground.dev/sandbox=interpreter" in st["selector"]
    k.kc.kubectl("scale", "sandbox", "interpreter", "-n", k.ns, "--replicas=3")
    wait_for(lambda: k.apps.read_namespaced_deployment("interpreter", k.ns).spec.replicas == 3, what="scaled to 3")
    wait_for(lambda: k.custom.get_namespaced_custom_object(
        "codeground.dev", "v1alpha1", k.ns, "sandboxes", "interpreter").get("status", {}).get("readyReplicas") == 3,
        what="3 ready")


def test_change_to_a_finished_stage_is_refused_with_a_condition(k):
    k.apply(run_doc(stages=["sft", "evaluate"], sandbox={}))
    k.wait_job("demo-sft-1")
    k.finish("demo-sft-1", message=result("sft"))
    k.wait_job("demo-evaluate-1")
    changed = run_doc(stages=["sft", "evaluate"], sandbox={})
    changed["spec"]["stages"][0]["resources"]["gpus"] = 4
    k.apply(changed)
    cond = wait_for(lambda: (c := k.condition("demo", "SpecValid")) and c["status"] == "False" and c, what="refused")
    assert cond["reason"] == "FinishedStageChanged" and "sft" in cond["message"]


@pytest.mark.parametrize(("change", "field"), [
    ({"stages": [{"name": "sft", "type": "sft", "resources": {"gpus": 100}}]}, "spec.stages[0].resources.gpus"),
    ({"stages": [{"name": "Bad_Name", "type": "sft"}]}, "spec.stages[0].name"),
    ({"backoffLimit": -1}, "spec.backoffLimit"),
    ({"stages": [{"name": "g", "type": "grpo"}]}, "spec.stages[0]"),
])
def test_bad_specs_are_rejected_by_the_api_server_naming_the_field(k, change, field):
    doc = run_doc()
    doc["spec"].update(change)
    out = k.apply(doc, check=False)
    assert out.returncode != 0
    assert field in out.stderr, out.stderr

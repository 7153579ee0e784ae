"""Unit tests of the pure builders: the manifests a user's TrainingRun and Sandbox turn into."""

from __future__ import annotations

import yaml

from codeground.operator import labels as L
from codeground.operator.builders import (
    build_spec_configmap,
    build_stage_job,
    build_stage_rbac,
    build_stage_service,
)
from codeground.operator.sandbox_builders import (
    build_sandbox_deployment,
    build_sandbox_network_policy,
    build_sandbox_service,
    desired_replicas,
    stage_sessions,
)
from codeground.pipeline import specio


def test_job_name_labels_owner_and_gpu_requests(run, owner, config):
    job = build_stage_job(run, "sft", 1, owner, config)
    assert job["metadata"]["name"] == "demo-sft-1"
    assert job["metadata"]["namespace"] == "team-a"
    assert job["metadata"]["labels"][L.RUN_LABEL] == "demo"
    assert job["metadata"]["labels"][L.STAGE_LABEL] == "sft"
    ref = job["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("TrainingRun", "uid-1", True)
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert c["resources"]["requests"] == c["resources"]["limits"]
    assert c["command"][-2:] == ["--stage", "sft"]
    assert c["image"] == "trainer:test"
    psc = job["spec"]["template"]["spec"]["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["CODEGROUND_ARTIFACTS_URI"] == "s3://bucket/runs"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["CODEGROUND_SANDBOX_URL"] == "http://interpreter.team-a.svc:8080"
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert "WORLD_SIZE" not in env
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[L.SANDBOX_LABEL] == "interpreter" and pod_labels[L.ATTEMPT_LABEL] == "1"


def test_multi_node_stage_is_an_indexed_job_with_torchrun_env(run, owner, config):
    job = build_stage_job(run, "grpo", 2, owner, config)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    assert spec["template"]["spec"]["subdomain"] == "demo-grpo"
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["WORLD_SIZE"]["value"] == "2"
    assert env["MASTER_ADDR"]["value"] == "demo-grpo-2-0.demo-grpo"
    assert "job-completion-index" in env["RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    svc = build_stage_service(run, "grpo", owner)
    assert svc["spec"]["clusterIP"] == "None" and svc["metadata"]["name"] == "demo-grpo"


def test_gpu_less_stage_requests_no_gpu_and_no_toleration(owner, config):
    from tests.operator.conftest import run_doc

    doc = run_doc()
    doc["spec"]["stages"][0]["resources"] = {"gpus": 0}
    run = specio.parse_object(doc)
    job = build_stage_job(run, "sft", 1, owner, config)
    assert "nvidia.com/gpu" not in job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "tolerations" not in job["spec"]["template"]["spec"]


def test_configmap_holds_a_spec_the_stage_entrypoint_can_parse(run, owner):
    cm = build_spec_configmap(run, owner)
    assert cm["metadata"]["name"] == "demo-spec"
    doc = yaml.safe_load(cm["data"]["run.yaml"])
    again = specio.parse_object(doc)
    assert again.spec == run.spec
    assert cm["metadata"]["annotations"][L.SPEC_HASH_ANNOTATION]


def test_builders_are_deterministic(run, owner, config):
    assert build_stage_job(run, "sft", 1, owner, config) == build_stage_job(run, "sft", 1, owner, config)


def test_stage_rbac_allows_only_get_and_patch_on_pods():
    sa, role, binding = build_stage_rbac("team-a")
    assert sa["kind"] == "ServiceAccount" and sa["metadata"]["name"] == L.STAGE_SERVICE_ACCOUNT
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]
    assert binding["subjects"][0]["namespace"] == "team-a"


def _sandbox(**spec):
    return specio.parse_object({"apiVersion": "codeground.dev/v1alpha1", "kind": "Sandbox",
                                "metadata": {"name": "interpreter", "namespace": "team-a"}, "spec": spec})


def test_sandbox_deployment_is_hardened(owner, config):
    sb = _sandbox(runtimeClassName="gvisor", replicas=2, resources={"cpu": "4", "memory": "8Gi", "scratch": "512Mi"})
    dep = build_sandbox_deployment(sb, owner, config, replicas=3)
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert dep["spec"]["replicas"] == 3
    assert pod["runtimeClassName"] == "gvisor"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    sc = c["securityContext"]
    # root inside gVisor with only what per-session uids need (see sandbox_builders' docstring)
    assert sc["runAsUser"] == 0 and sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETGID", "SETUID"]}
    assert c["command"][c["command"].index("--isolation") + 1] == "pod"
    assert sc["allowPrivilegeEscalation"] is False and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["requests"] == c["resources"]["limits"] == {"cpu": "4", "memory": "8Gi"}
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == "512Mi"
    assert c["command"][:3] == ["codeground", "sandbox", "serve"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_sandbox_service_is_headless_and_policy_denies_by_default(owner):
    sb = _sandbox()
    svc = build_sandbox_service(sb, owner)
    assert svc["spec"]["clusterIP"] == "None"
    pol = build_sandbox_network_policy(sb, owner)
    assert pol["spec"]["policyTypes"] == ["Ingress", "Egress"] and pol["spec"]["egress"] == []
    peer = pol["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert peer == {L.SANDBOX_LABEL: "interpreter", L.COMPONENT_LABEL: "stage"}


def test_pool_size_follows_demand_within_bounds(run):
    sb = _sandbox(replicas=2, maxReplicas=6, limits={"maxSessions": 64})
    grpo = run.spec.stage("grpo")
    assert stage_sessions(grpo) == 32 * 16
    assert desired_replicas(sb, []) == 2
    assert desired_replicas(sb, [stage_sessions(grpo)]) == 6  # 512 / 64 = 8, capped at 6
    assert desired_replicas(sb, [100]) == 2
    assert desired_replicas(sb, [200]) == 4


def test_sandbox_command_carries_the_session_limits(owner, config):
    import argparse

    from codeground.pipeline.sandbox.service import add_cli  # the flags must be ones serve accepts

    sb = _sandbox(limits={"timeoutSeconds": 5, "memory": "512Mi", "maxSessions": 32})
    cmd = build_sandbox_deployment(sb, owner, config, replicas=1)["spec"]["template"]["spec"]["containers"][0]["command"]
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(cmd[1:])
    assert (args.timeout_seconds, args.memory, args.max_sessions, args.host) == (5.0, "512Mi", 32, "0.0.0.0")

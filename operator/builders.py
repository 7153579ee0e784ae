"""Pure builders of the Kubernetes objects a TrainingRun owns: spec ConfigMap, stage Jobs, Services, RBAC.

Called by :mod:`codeground.operator.runs` (the reconciler), which creates what is absent. Every
function takes plain data (the parsed :class:`TrainingRun`, its owner reference, the operator config)
and returns a manifest dict with a deterministic name: no I/O, so tests check them without a cluster.

What they do not guarantee: that the cluster can run the result (images exist, GPUs are free, the
credentials Secret exists); the API server and the scheduler decide that.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import yaml

from codeground.pipeline import spec as api
from codeground.pipeline.specio import dump_object

from . import labels as L
from .config import OperatorConfig

STAGE_USER = 10001


@dataclass(frozen=True)
class Owner:
    """The object children belong to; deleting it deletes them (garbage collector, no finalizer)."""

    api_version: str
    kind: str
    name: str
    uid: str

    @classmethod
    def of(cls, body: dict[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(body["apiVersion"], body["kind"], meta["name"], meta["uid"])

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


def _meta(name: str, namespace: str | None, labels: dict[str, str], owner: Owner | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": dict(labels)}
    if namespace:
        meta["namespace"] = namespace
    if owner is not None:
        meta["ownerReferences"] = [owner.reference()]
    return meta


def spec_document(run: api.TrainingRun) -> str:
    """The run as stage pods read it (``codeground stage run --spec``): name, namespace and spec."""
    doc = {"apiVersion": api.API_VERSION, "kind": "TrainingRun",
           "metadata": {"name": run.metadata.name, **({"namespace": run.metadata.namespace} if run.metadata.namespace else {})},
           "spec": dump_object(run.spec)}
    return yaml.safe_dump(doc, sort_keys=False)


def spec_hash(run_spec: api.TrainingRunSpec) -> str:
    return hashlib.sha256(json.dumps(dump_object(run_spec), sort_keys=True).encode()).hexdigest()[:16]


def build_spec_configmap(run: api.TrainingRun, owner: Owner) -> dict[str, Any]:
    """ConfigMap ``<run>-spec`` holding the accepted spec; mounted read-only into every stage pod."""
    name = run.metadata.name
    meta = _meta(L.spec_configmap_name(name), run.metadata.namespace, L.run_labels(name), owner)
    meta["annotations"] = {L.SPEC_HASH_ANNOTATION: spec_hash(run.spec)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {L.SPEC_FILE: spec_document(run)}}


def _resources(res: api.Resources) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": str(res.cpu), "memory": str(res.memory)}
    if res.gpus:
        amounts[L.GPU_RESOURCE] = str(res.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}  # requests = limits: Guaranteed QoS


def _stage_env(run: api.TrainingRun, stage: api.StageSpec, attempt: int, job: str) -> list[dict[str, Any]]:
    spec = run.spec
    env: list[dict[str, Any]] = [
        {"name": "CODEGROUND_RUN", "value": run.metadata.name},
        {"name": "CODEGROUND_STAGE", "value": stage.name},
        {"name": "CODEGROUND_ATTEMPT", "value": str(attempt)},
        {"name": "CODEGROUND_ARTIFACTS_URI", "value": spec.artifacts.uri},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if spec.artifacts.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": spec.artifacts.endpoint})
    if spec.sandbox.name:
        env.append({"name": "CODEGROUND_SANDBOX_URL",
                    "value": L.sandbox_endpoint(spec.sandbox.name, run.metadata.namespace or "default")})
    if spec.teacher and spec.teacher.api_key_secret:
        env.append({"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {
            "name": spec.teacher.api_key_secret, "key": "OPENAI_API_KEY"}}})
    if stage.resources.nodes > 1:
        service = L.stage_service_name(run.metadata.name, stage.name)
        env += [
            {"name": "WORLD_SIZE", "value": str(stage.resources.nodes)},
            {"name": "NNODES", "value": str(stage.resources.nodes)},
            {"name": "RANK", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
            {"name": "NODE_RANK", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
            # Indexed Job pods are named <job>-<index> in the Service's subdomain: rank 0 is the master.
            {"name": "MASTER_ADDR", "value": f"{job}-0.{service}"},
            {"name": "MASTER_PORT", "value": str(L.MASTER_PORT)},
        ]
    return env


def build_stage_job(run: api.TrainingRun, stage_name: str, attempt: int, owner: Owner,
                    config: OperatorConfig, *, suspend: bool = False) -> dict[str, Any]:
    """The Job of one stage attempt: ``<run>-<stage>-<attempt>``.

    One pod per node (an indexed Job with a headless Service when ``resources.nodes > 1``), no
    in-Job retries (the operator retries with a new attempt, so every attempt has its own name),
    GPUs requested as ``nvidia.com/gpu`` (requests = limits), the run spec mounted from the ConfigMap,
    the artifact store and sandbox in env, credentials from the referenced Secret.
    """
    stage = run.spec.stage(stage_name)
    name = L.job_name(run.metadata.name, stage.name, attempt)
    labels = L.stage_labels(run.metadata.name, stage.name, attempt)
    pod_labels = dict(config.extra_pod_labels) | labels
    if run.spec.sandbox.name:
        pod_labels[L.SANDBOX_LABEL] = run.spec.sandbox.name  # lets the Sandbox's NetworkPolicy admit it
    nodes = stage.resources.nodes
    container: dict[str, Any] = {
        "name": "stage",
        "image": stage.image or config.trainer_image,
        "command": ["codeground", "stage", "run", "--spec", f"{L.SPEC_MOUNT_DIR}/{L.SPEC_FILE}", "--stage", stage.name],
        "env": _stage_env(run, stage, attempt, name),
        "resources": _resources(stage.resources),
        "volumeMounts": [
            {"name": "spec", "mountPath": L.SPEC_MOUNT_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if run.spec.artifacts.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": run.spec.artifacts.credentials_secret}}]
    if nodes > 1:
        container["ports"] = [{"name": "torchrun", "containerPort": L.MASTER_PORT}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": L.STAGE_SERVICE_ACCOUNT,
        "enableServiceLinks": False,
        # Pod Security "restricted": non-root (the `codeground` user of images/Dockerfile.trainer).
        "securityContext": {"runAsNonRoot": True, "runAsUser": STAGE_USER, "fsGroup": STAGE_USER,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [
            {"name": "spec", "configMap": {"name": L.spec_configmap_name(run.metadata.name)}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    if stage.resources.gpus:
        pod_spec["tolerations"] = [{"key": L.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "completions": nodes,
        "parallelism": nodes,
        "suspend": suspend,
        "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
    }
    if nodes > 1:
        job_spec["completionMode"] = "Indexed"
        pod_spec["subdomain"] = L.stage_service_name(run.metadata.name, stage.name)
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": _meta(name, run.metadata.namespace, labels, owner), "spec": job_spec}


def build_stage_service(run: api.TrainingRun, stage_name: str, owner: Owner) -> dict[str, Any]:
    """Headless Service giving a multi-node stage's pods DNS names (``<job>-<index>.<service>``)."""
    stage = run.spec.stage(stage_name)
    name = L.stage_service_name(run.metadata.name, stage.name)
    labels = L.stage_labels(run.metadata.name, stage.name)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(name, run.metadata.namespace, labels, owner),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": {L.RUN_LABEL: run.metadata.name, L.STAGE_LABEL: stage.name},
                     "ports": [{"name": "torchrun", "port": L.MASTER_PORT, "targetPort": L.MASTER_PORT}]}}


def build_stage_rbac(namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding stage pods use to report progress on their own Pod.

    Shared by every run in the namespace (no owner: it outlives runs). The Role allows get/patch on
    pods only; a stage can therefore annotate other pods of its namespace, not create or exec into any.
    """
    name = L.STAGE_SERVICE_ACCOUNT
    labels = {L.MANAGED_BY_LABEL: L.MANAGER, L.PART_OF_LABEL: "codeground"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, namespace, labels, None)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(name, namespace, labels, None),
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _meta(name, namespace, labels, None),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
    ]

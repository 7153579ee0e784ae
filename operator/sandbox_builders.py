"""Pure builders of a Sandbox's objects: the interpreter pool Deployment, its Service and NetworkPolicy.

Called by :mod:`codeground.operator.sandboxes`. No I/O. Also holds the pool-sizing rule
(:func:`desired_replicas`): how many replicas the running stages need, within the Sandbox's bounds.

Hardening of every pod: the RuntimeClass from the spec (gVisor by default), no service-account token,
read-only root filesystem with a size-limited in-memory scratch volume at /tmp, every capability
dropped but the six the server needs to give each session its own uid, no privilege escalation,
seccomp RuntimeDefault, requests = limits.

Why not non-root with all capabilities dropped, as issue 8 first asked: a pod holds many sessions,
and sessions that share one uid can read each other's files and kill each other's processes (the
server's too). The server therefore starts as uid 0 *inside the gVisor sandbox* (gVisor's user-space
kernel, not the host's: root there is not root on the node) with only SETUID, SETGID, CHOWN, DAC_OVERRIDE,
FOWNER and KILL, and runs every session under a uid of its own (``sandbox serve --isolation pod``). The
NetworkPolicy denies all egress and admits ingress only from pods labelled for this Sandbox (the
operator labels the stage pods of runs that name it).

What it does not guarantee: isolation where the cluster lacks the RuntimeClass (pods are then
rejected by admission, visible as the Deployment's ReplicaFailure) or enforces no NetworkPolicy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from codeground.pipeline import spec as api

from . import labels as L
from .builders import Owner, _meta
from .config import OperatorConfig

# Concurrent trajectories of a distill or evaluate stage (the rollout backends' default concurrency).
ROLLOUT_CONCURRENCY = 64
# The server's capabilities in --isolation pod: switch to a session uid, hand it its scratch dir, kill
# what the session left behind. Everything else is dropped.
SERVER_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETGID", "SETUID"]


def stage_sessions(stage: api.StageSpec) -> int:
    """Concurrent interpreter sessions a running stage needs: one per trajectory in flight."""
    if stage.type == "grpo" and stage.grpo:
        return stage.grpo.prompts_per_step * stage.grpo.num_generations
    if stage.type == "distill" and stage.distill:
        return ROLLOUT_CONCURRENCY * stage.distill.samples_per_problem
    if stage.type == "evaluate":
        return ROLLOUT_CONCURRENCY
    return 0


def desired_replicas(sandbox: api.Sandbox, sessions: Iterable[int]) -> int:
    """Pool size: base ``replicas``, raised to cover the running stages' sessions, capped at ``maxReplicas``."""
    need = math.ceil(sum(sessions) / sandbox.spec.limits.max_sessions)
    return max(sandbox.spec.replicas, min(sandbox.spec.max_replicas, need))


def _serve_command(limits: api.SandboxLimits) -> list[str]:
    """``codeground sandbox serve`` with the per-session limits of the spec (flags of its add_cli)."""
    return ["codeground", "sandbox", "serve", "--host", "0.0.0.0", "--port", str(L.SANDBOX_PORT),
            "--isolation", "pod", "--preload", "numpy,sympy",
            "--timeout-seconds", str(limits.timeout_seconds), "--memory", str(limits.memory),
            "--max-processes", str(limits.max_processes), "--max-output-bytes", str(limits.max_output_bytes),
            "--max-sessions", str(limits.max_sessions), "--session-idle-seconds", str(limits.session_idle_seconds)]


def build_sandbox_deployment(sandbox: api.Sandbox, owner: Owner, config: OperatorConfig, replicas: int) -> dict[str, Any]:
    """Deployment ``<sandbox>`` of ``codeground sandbox serve`` pods, hardened as the module says."""
    name, ns = sandbox.metadata.name, sandbox.metadata.namespace
    spec = sandbox.spec
    amounts = {"cpu": str(spec.resources.cpu), "memory": str(spec.resources.memory)}
    probe = {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3}
    container = {
        "name": "sandbox",
        "image": spec.image or config.sandbox_image,
        "command": _serve_command(spec.limits),
        "env": [{"name": "TMPDIR", "value": "/tmp"}, {"name": "HOME", "value": "/tmp"}],
        "ports": [{"name": "http", "containerPort": L.SANDBOX_PORT}],
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3},
        "securityContext": {
            "runAsUser": 0, "runAsNonRoot": False,  # inside gVisor; sessions get their own uids (see above)
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "privileged": False,
            "capabilities": {"drop": ["ALL"], "add": list(SERVER_CAPABILITIES)},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
    }
    pod_spec = {
        "runtimeClassName": spec.runtime_class_name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": str(spec.resources.scratch)}}],
    }
    labels = L.sandbox_labels(name)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, ns, labels, owner),
            "spec": {"replicas": replicas, "selector": {"matchLabels": L.sandbox_selector(name)},
                     "template": {"metadata": {"labels": labels}, "spec": pod_spec}}}


def build_sandbox_service(sandbox: api.Sandbox, owner: Owner) -> dict[str, Any]:
    """Headless Service ``<sandbox>``: clients resolve pod addresses, so a session sticks to its pod."""
    name = sandbox.metadata.name
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(name, sandbox.metadata.namespace, L.sandbox_labels(name), owner),
            "spec": {"clusterIP": "None", "selector": L.sandbox_selector(name),
                     "ports": [{"name": "http", "port": L.SANDBOX_PORT, "targetPort": "http"}]}}


def build_sandbox_network_policy(sandbox: api.Sandbox, owner: Owner) -> dict[str, Any]:
    """Default deny for the pool: no egress at all, ingress on the HTTP port only from the runs' pods."""
    name = sandbox.metadata.name
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(name, sandbox.metadata.namespace, L.sandbox_labels(name), owner),
            "spec": {"podSelector": {"matchLabels": L.sandbox_selector(name)},
                     "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {
                                     L.SANDBOX_LABEL: name, L.COMPONENT_LABEL: "stage"}}}],
                                  "ports": [{"protocol": "TCP", "port": L.SANDBOX_PORT}]}],
                     "egress": []}}

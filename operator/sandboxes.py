"""Reconcile one Sandbox: its Deployment, headless Service and NetworkPolicy, pool size and status.

Called by the work queue (in a worker thread) for key ``("Sandbox", namespace, name)``, on Sandbox
changes (``kubectl scale`` included), on changes of its Deployment, and when a run that names it
starts or finishes a stage. The pool size is :func:`desired_replicas` over the stages running now in
runs that name this Sandbox. TrainingRuns waiting for this Sandbox to exist are poked afterwards.

What it does not guarantee: that pods become ready (that needs the RuntimeClass and the image on the
nodes); the status and the Ready condition say what was observed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from codeground.pipeline import spec as api
from codeground.pipeline.errors import SpecError
from codeground.pipeline.specio import dump_object, parse_object

from . import labels as L
from .builders import Owner
from .config import OperatorConfig
from .kube import Kube
from .runs import owned_by
from .sandbox_builders import (
    build_sandbox_deployment,
    build_sandbox_network_policy,
    build_sandbox_service,
    desired_replicas,
    stage_sessions,
)
from .statemachine import set_condition
from .workqueue import Key, Outcome

PLURAL = "sandboxes"


def _running_sessions(runs: list[dict[str, Any]], sandbox: str) -> tuple[list[int], list[str]]:
    """Sessions each running stage naming ``sandbox`` needs, and the runs waiting for it to exist."""
    sessions, waiting = [], []
    for r in runs:
        spec, status = r.get("spec") or {}, r.get("status") or {}
        if (spec.get("sandbox") or {}).get("name") != sandbox:
            continue
        if any(c.get("reason") == "SandboxNotFound" for c in status.get("conditions") or []):
            waiting.append(r["metadata"]["name"])
        if status.get("phase") != "Running":
            continue
        for st in spec.get("stages") or []:
            if st.get("name") == status.get("currentStage"):
                with contextlib.suppress(Exception):
                    sessions.append(stage_sessions(api.StageSpec.model_validate(st)))
    return sessions, waiting


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def reconcile_sandbox(kube: Kube, config: OperatorConfig, ns: str, name: str) -> Outcome:
    body = kube.get_custom(PLURAL, ns, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return Outcome()
    try:
        sandbox = parse_object({k: v for k, v in body.items() if k != "status"})
    except SpecError as exc:
        kube.post_event(body, "Warning", "InvalidSpec", exc.format())
        return Outcome()
    assert isinstance(sandbox, api.Sandbox)
    owner = Owner.of(body)
    sessions, waiting = _running_sessions(kube.list_custom("trainingruns", ns), name)
    replicas = desired_replicas(sandbox, sessions)
    desired = build_sandbox_deployment(sandbox, owner, config, replicas)
    desired["metadata"]["annotations"] = {L.SPEC_HASH_ANNOTATION: _hash(desired["spec"]["template"])}
    current = kube.get_deployment(ns, name)
    events: list[tuple[str, str, str]] = []
    if current is None:
        kube.create(build_sandbox_service(sandbox, owner))
        kube.create(build_sandbox_network_policy(sandbox, owner))
        kube.create(desired)
        current = desired
        events.append(("Normal", "PoolCreated", f"created Deployment {name} with {replicas} replicas"))
    elif not owned_by(current, owner.uid):
        return Outcome(requeue_after=2.0)  # a deleted Sandbox's Deployment still being collected
    else:
        patch: dict[str, Any] = {}
        old_replicas = (current.get("spec") or {}).get("replicas")
        if old_replicas != replicas:
            patch["spec"] = {"replicas": replicas}
            events.append(("Normal", "PoolResized", f"pool {old_replicas} → {replicas} replicas "
                           f"({sum(sessions)} sessions wanted by running stages)"))
        if (current["metadata"].get("annotations") or {}).get(L.SPEC_HASH_ANNOTATION) != desired["metadata"]["annotations"][L.SPEC_HASH_ANNOTATION]:
            patch.setdefault("spec", {})["template"] = desired["spec"]["template"]
            patch["metadata"] = {"annotations": desired["metadata"]["annotations"]}
        if patch:
            kube.patch_deployment(ns, name, patch)

    dstatus = current.get("status") or {}
    prev = api.SandboxStatus.model_validate(body.get("status") or {})
    now = datetime.now(timezone.utc)
    gen = body["metadata"].get("generation")
    ready = int(dstatus.get("readyReplicas") or 0)
    conds = [c.model_copy() for c in prev.conditions]
    failure = next((c for c in dstatus.get("conditions") or [] if c.get("type") == "ReplicaFailure" and c.get("status") == "True"), None)
    if ready > 0:
        set_condition(conds, "Ready", True, "PoolReady", f"{ready}/{replicas} replicas ready", now, gen)
    elif replicas == 0:
        set_condition(conds, "Ready", False, "ScaledToZero", "spec.replicas is 0 and no stage needs the pool", now, gen)
    elif failure:
        set_condition(conds, "Ready", False, "ReplicaFailure", failure.get("message", ""), now, gen)
    else:
        set_condition(conds, "Ready", False, "NoReadyReplica", f"0/{replicas} replicas ready", now, gen)
    status = api.SandboxStatus(
        replicas=int(dstatus.get("replicas") or 0), ready_replicas=ready,
        selector=L.selector_string(L.sandbox_selector(name)), endpoint=L.sandbox_endpoint(name, ns),
        conditions=conds, observed_generation=gen,
    )
    new = dump_object(status)
    if new != body.get("status"):
        kube.patch_status(PLURAL, ns, name, new, body.get("status"))
        old_ready = next((c for c in prev.conditions if c.type == "Ready"), None)
        new_ready = next(c for c in conds if c.type == "Ready")
        if old_ready is None or (old_ready.status, old_ready.reason) != (new_ready.status, new_ready.reason):
            events.append(("Normal" if new_ready.status == "True" else "Warning", new_ready.reason, new_ready.message))
    for type_, reason, message in events:
        kube.post_event(body, type_, reason, message)
    also: list[Key] = [("TrainingRun", ns, r) for r in waiting]
    return Outcome(also=also)

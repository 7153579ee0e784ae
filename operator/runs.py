"""Reconcile one TrainingRun: read it and its Jobs, let the state machine decide, carry out the plan.

Called by the work queue (in a worker thread) for key ``("TrainingRun", namespace, name)``. One pass:
GET the run, make sure the stage RBAC and the spec ConfigMap exist (a spec change that touches a
Succeeded stage is refused and the accepted spec in the ConfigMap keeps running), list the run's Jobs
(owned by this run's uid) and Pods, look up the named Sandbox, :func:`decide`, then create Jobs
(create-if-absent: a 409 means an earlier pass or operator already made it), suspend/resume,
clean up after the TTL, patch the status when it changed and post the Events.

What it does not guarantee: Events when the API rejects them (they are best-effort); the status
write happens after the Jobs are created, so a crash in between is healed by the next pass.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import yaml

from codeground.pipeline import spec as api
from codeground.pipeline.errors import SpecError
from codeground.pipeline.specio import dump_object, parse_object

from . import labels as L
from .builders import Owner, build_spec_configmap, build_stage_job, build_stage_rbac, build_stage_service
from .config import OperatorConfig
from .kube import Kube
from .metrics import JOBS_CREATED
from .observe import observe_jobs
from .statemachine import SandboxState, decide, refused_change, set_condition
from .workqueue import Outcome

log = logging.getLogger(__name__)
PLURAL = "trainingruns"


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def _status_of(body: dict[str, Any]) -> api.TrainingRunStatus:
    try:
        return api.TrainingRunStatus.model_validate(body.get("status") or {})
    except Exception:  # written by someone else in a shape we do not know: start over from the Jobs
        return api.TrainingRunStatus()


def _accept_spec(kube: Kube, run: api.TrainingRun, owner: Owner, prev: api.TrainingRunStatus
                 ) -> tuple[api.TrainingRun, str | None, bool]:
    """(spec to run, refusal message, wait) after reconciling the ConfigMap with the new spec."""
    ns = run.metadata.namespace or "default"
    desired = build_spec_configmap(run, owner)
    cm = kube.get_configmap(ns, desired["metadata"]["name"])
    if cm is None:
        kube.create(desired)
        return run, None, False
    if not owned_by(cm, owner.uid):
        return run, None, True  # left by a deleted run of the same name; the garbage collector removes it
    if (cm["metadata"].get("annotations") or {}).get(L.SPEC_HASH_ANNOTATION) == desired["metadata"]["annotations"][L.SPEC_HASH_ANNOTATION]:
        return run, None, False
    try:
        accepted = parse_object(yaml.safe_load(cm["data"][L.SPEC_FILE]))
    except Exception:
        accepted = None
    succeeded = {s.name for s in prev.stages if s.phase == "Succeeded"}
    refused = refused_change(accepted.spec, run.spec, succeeded) if isinstance(accepted, api.TrainingRun) else None
    if refused and isinstance(accepted, api.TrainingRun):
        # Keep running what was accepted; the control fields still apply.
        spec = accepted.spec.model_copy(update={"suspend": run.spec.suspend, "backoff_limit": run.spec.backoff_limit,
                                                "ttl_seconds_after_finished": run.spec.ttl_seconds_after_finished})
        return run.model_copy(update={"spec": spec}), refused, False
    desired["metadata"]["resourceVersion"] = cm["metadata"]["resourceVersion"]
    kube.replace_configmap(desired)
    return run, None, False


def _invalid(kube: Kube, body: dict[str, Any], exc: SpecError) -> Outcome:
    """A spec the API server let through but the models refuse (version skew): report, never retry."""
    prev = _status_of(body)
    now = datetime.now(timezone.utc)
    gen = body["metadata"].get("generation")
    conds = list(prev.conditions)
    set_condition(conds, "SpecValid", False, "InvalidSpec", exc.format()[:4096], now, gen)
    set_condition(conds, "Ready", False, "InvalidSpec", "fix the spec; see the SpecValid condition", now, gen)
    status = prev.model_copy(update={"conditions": conds, "observed_generation": gen})
    new = dump_object(status)
    if new != body.get("status"):
        kube.patch_status(PLURAL, body["metadata"]["namespace"], body["metadata"]["name"], new, body.get("status"))
        kube.post_event(body, "Warning", "InvalidSpec", exc.format())
    return Outcome()


def reconcile_run(kube: Kube, config: OperatorConfig, ns: str, name: str, rbac_done: set[str],
                  now: datetime | None = None) -> Outcome:
    body = kube.get_custom(PLURAL, ns, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return Outcome()
    try:
        run = parse_object({k: v for k, v in body.items() if k != "status"})
    except SpecError as exc:
        return _invalid(kube, body, exc)
    assert isinstance(run, api.TrainingRun)
    owner = Owner.of(body)
    prev = _status_of(body)
    finished = prev.phase in ("Succeeded", "Failed") and prev.observed_generation == body["metadata"].get("generation")
    if ns not in rbac_done:
        for manifest in build_stage_rbac(ns):
            kube.create(manifest)
        rbac_done.add(ns)
    run, refused, wait = _accept_spec(kube, run, owner, prev)
    if wait:
        return Outcome(requeue_after=2.0)

    sandbox = None
    if run.spec.sandbox.name and not finished:
        sb = kube.get_custom("sandboxes", ns, run.spec.sandbox.name)
        sandbox = SandboxState(exists=sb is not None,
                               ready=bool(sb and ((sb.get("status") or {}).get("readyReplicas") or 0) > 0))
    selector = f"{L.RUN_LABEL}={name}"
    jobs = [j for j in kube.list_jobs(ns, selector) if owned_by(j, owner.uid)]
    pods = kube.list_pods(ns, selector) if jobs and not finished else []
    views = observe_jobs(name, jobs, pods)
    plan = decide(run, body["metadata"].get("generation"), prev, views, sandbox,
                  now or datetime.now(timezone.utc), config, refused)

    for stage_name, attempt in plan.create:
        if run.spec.stage(stage_name).resources.nodes > 1:
            kube.create(build_stage_service(run, stage_name, owner))
        if kube.create(build_stage_job(run, stage_name, attempt, owner, config)):
            JOBS_CREATED.inc()
            log.info("created Job %s/%s", ns, L.job_name(name, stage_name, attempt))
    for job, suspend in plan.suspend:
        kube.set_job_suspend(ns, job, suspend)
    if plan.cleanup:
        kube.delete_jobs(ns, selector)
    new_status = dump_object(plan.status)
    if new_status != body.get("status"):
        kube.patch_status(PLURAL, ns, name, new_status, body.get("status"))
    for event in plan.events:
        kube.post_event(body, event.type, event.reason, event.message)

    also = []
    if run.spec.sandbox.name and (prev.phase, prev.current_stage) != (plan.status.phase, plan.status.current_stage):
        also.append(("Sandbox", ns, run.spec.sandbox.name))  # its pool size follows running stages
    return Outcome(requeue_after=plan.requeue_after, also=also)

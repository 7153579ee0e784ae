"""The TrainingRun stage state machine: spec + last status + observed Jobs → next status and actions.

Pure and deterministic given ``now``: :mod:`codeground.operator.runs` feeds it what it read from the
API and carries out the :class:`Plan` (create Jobs, suspend/resume them, clean up, patch status, post
Events). Because the Jobs are the record of every attempt and the status is re-derived from them on
every call, running it twice, or after an operator restart, plans nothing new.

Rules: stages run in spec order; the first stage not Succeeded is the current one. A Succeeded Job
records the stage's artifact URI and metrics and the next stage starts in the same pass. A failed
attempt is retried after ``retry_delay`` (exponential) until ``backoffLimit`` retries are used, or at
once Failed when the stage said retrying cannot help (invalid spec). ``suspend`` suspends the current
Job (its pods stop) and resuming un-suspends it; the stage resumes from its own checkpoints. Events
are derived from status transitions, so each transition is announced once.

What it does not guarantee: wall-clock precision (retries and the TTL happen at the next reconcile
at or after their time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from codeground.pipeline import spec as api

from .config import OperatorConfig
from .observe import JobView

REWARD_KEYS = ("reward", "reward_mean", "rewards/mean", "train/reward")
NEEDS_SANDBOX = {"distill", "grpo", "evaluate"}


@dataclass(frozen=True)
class SandboxState:
    """What the run's named Sandbox looks like now."""

    exists: bool
    ready: bool = False


@dataclass
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: api.TrainingRunStatus
    create: list[tuple[str, int]] = field(default_factory=list)  # (stage, attempt)
    suspend: list[tuple[str, bool]] = field(default_factory=list)  # (job name, suspend)
    cleanup: bool = False  # TTL passed: delete the run's Jobs (their pods follow)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def fmt_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def set_condition(conds: list[api.Condition], type_: str, status: bool, reason: str, message: str,
                  now: datetime, generation: int | None) -> None:
    """Set a condition in place; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    for i, c in enumerate(conds):
        if c.type == type_:
            ltt = c.last_transition_time if c.status == value else fmt_time(now)
            conds[i] = api.Condition(type=type_, status=value, reason=reason, message=message,
                                     last_transition_time=ltt, observed_generation=generation)
            return
    conds.append(api.Condition(type=type_, status=value, reason=reason, message=message,
                               last_transition_time=fmt_time(now), observed_generation=generation))


def get_condition(status: api.TrainingRunStatus, type_: str) -> api.Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def refused_change(accepted: api.TrainingRunSpec, new: api.TrainingRunSpec, succeeded: set[str]) -> str | None:
    """Why ``new`` may not replace ``accepted``: a Succeeded stage was changed, moved or removed."""
    new_index = {s.name: i for i, s in enumerate(new.stages)}
    for i, old in enumerate(accepted.stages):
        if old.name not in succeeded:
            continue
        j = new_index.get(old.name)
        if j is None:
            return f"stage {old.name} already Succeeded and cannot be removed"
        if j != i:
            return f"stage {old.name} already Succeeded and cannot move from position {i} to {j}"
        if new.stages[j].model_dump() != old.model_dump():
            return (f"spec.stages[{j}] ({old.name}) already Succeeded; its spec cannot change. "
                    "Revert the change, or create a new TrainingRun for a different pipeline")
    return None


def _reward(metrics: dict[str, float]) -> float | None:
    return next((metrics[k] for k in REWARD_KEYS if k in metrics), None)


def decide(run: api.TrainingRun, generation: int | None, prev: api.TrainingRunStatus,
           jobs: dict[str, list[JobView]], sandbox: SandboxState | None, now: datetime,
           config: OperatorConfig, refused: str | None = None) -> Plan:
    """The next status of ``run`` and what to do to get there (see the module docstring)."""
    spec = run.spec
    old_stages = {s.name: s for s in prev.stages}
    plan = Plan(status=api.TrainingRunStatus())
    stages: list[api.StageStatus] = []
    current: api.StageSpec | None = None
    failed_msg: str | None = None
    waiting_sandbox = False
    blocked = False

    def requeue(seconds: float) -> None:
        plan.requeue_after = seconds if plan.requeue_after is None else min(plan.requeue_after, seconds)

    for stage in spec.stages:
        old = old_stages.get(stage.name) or api.StageStatus(name=stage.name)
        new = old.model_copy(deep=True)
        stages.append(new)
        views = jobs.get(stage.name, [])
        latest = views[-1] if views else None
        if blocked or old.phase == "Succeeded":
            continue
        if old.phase == "Failed" and (latest is None or latest.state == "failed"):
            failed_msg, blocked, current = f"stage {stage.name} failed: {old.message}", True, stage
            continue
        current, blocked = stage, True
        new.progress = None
        if latest is not None and latest.deleting:
            requeue(2.0)  # an old Job is being deleted; decide once it is gone
        elif latest is None:
            attempt = old.attempts if old.phase == "Running" and old.attempts else old.attempts + 1
            if sandbox is not None and not sandbox.exists and stage.type in NEEDS_SANDBOX:
                waiting_sandbox = True
                new.phase = "Pending"
            elif spec.suspend:
                new.phase = "Pending"
            else:
                plan.create.append((stage.name, attempt))
                new.phase, new.attempts, new.start_time = "Running", attempt, fmt_time(now)
                new.completion_time, new.message = None, None
        elif latest.state == "active":
            new.phase, new.attempts = "Running", latest.attempt
            new.start_time = old.start_time if old.attempts == latest.attempt and old.start_time else (
                latest.start_time or fmt_time(now))
            new.message = None
            new.progress = latest.progress
            new.metrics = dict(old.metrics) | latest.progress_metrics
            if latest.suspended != spec.suspend:
                plan.suspend.append((latest.name, spec.suspend))
        elif latest.state == "succeeded":
            new.phase, new.attempts = "Succeeded", latest.attempt
            new.completion_time = latest.finished_at or fmt_time(now)
            new.artifact_uri = latest.artifact_uri or new.artifact_uri
            new.metrics = dict(new.metrics) | latest.metrics
            new.message, new.progress = None, None
            current, blocked = None, False
        else:  # failed
            retries_used = latest.attempt - 1
            if latest.permanent or retries_used >= spec.backoff_limit:
                why = "retrying cannot help" if latest.permanent else f"backoffLimit {spec.backoff_limit} retries used"
                new.phase, new.attempts = "Failed", latest.attempt
                new.message = f"attempt {latest.attempt} failed ({why}): {latest.error}"[:4096]
                new.completion_time = latest.finished_at or fmt_time(now)
                failed_msg = f"stage {stage.name} failed: {new.message}"
            else:
                new.phase, new.attempts = "Running", latest.attempt
                new.message = f"attempt {latest.attempt} failed: {latest.error}"[:4096]
                finished = parse_time(latest.finished_at) or now
                retry_at = finished + timedelta(seconds=config.retry_delay(latest.attempt))
                if spec.suspend:
                    pass
                elif now >= retry_at:
                    plan.create.append((stage.name, latest.attempt + 1))
                    new.attempts, new.start_time = latest.attempt + 1, fmt_time(now)
                else:
                    requeue((retry_at - now).total_seconds())

    st = plan.status
    st.stages = stages
    st.observed_generation = generation
    st.conditions = [c.model_copy() for c in prev.conditions]
    all_done = all(s.phase == "Succeeded" for s in stages)
    if failed_msg:
        st.phase = "Failed"
    elif all_done:
        st.phase = "Succeeded"
    elif spec.suspend:
        st.phase = "Suspended"
    elif waiting_sandbox or not any(s.phase == "Running" for s in stages):
        st.phase = "Pending"
    else:
        st.phase = "Running"
    cur_status = next((s for s in stages if current and s.name == current.name), None)
    st.current_stage = current.name if current else (stages[-1].name if stages else None)
    st.progress = cur_status.progress if cur_status and st.phase == "Running" else None
    rewards = [r for s in stages if (r := _reward(s.metrics)) is not None]
    st.reward = _reward(cur_status.metrics) if cur_status and _reward(cur_status.metrics) is not None else (
        rewards[-1] if rewards else prev.reward)

    _conditions(st, spec, generation, now, failed_msg, waiting_sandbox, sandbox, refused)
    if st.phase in ("Succeeded", "Failed") and spec.ttl_seconds_after_finished is not None and jobs:
        finished = max((t for s in stages if (t := parse_time(s.completion_time))), default=now)
        left = (finished + timedelta(seconds=spec.ttl_seconds_after_finished) - now).total_seconds()
        if left <= 0:
            plan.cleanup = True
            plan.events.append(Event("Normal", "CleanedUp",
                                      f"ttlSecondsAfterFinished ({spec.ttl_seconds_after_finished}s) passed: deleting Jobs and pods"))
        else:
            requeue(left)
    plan.events[:0] = _transition_events(run, prev, st, plan)
    return plan


def _conditions(st: api.TrainingRunStatus, spec: api.TrainingRunSpec, gen: int | None, now: datetime,
                failed_msg: str | None, waiting_sandbox: bool, sandbox: SandboxState | None,
                refused: str | None) -> None:
    c = st.conditions
    phase = st.phase
    if phase == "Failed":
        ready = (False, "StageFailed", failed_msg or "")
    elif phase == "Succeeded":
        ready = (True, "Succeeded", "every stage succeeded")
    elif phase == "Suspended":
        ready = (False, "Suspended", "spec.suspend is true")
    elif waiting_sandbox:
        ready = (False, "SandboxNotFound", f"waiting for Sandbox {spec.sandbox.name!r} in this namespace; create it "
                                           "(kubectl apply -f sandbox.yaml) or fix spec.sandbox.name")
    elif phase == "Running":
        ready = (True, "StageRunning", f"stage {st.current_stage} is running")
    else:
        ready = (False, "Pending", f"stage {st.current_stage} is waiting to start")
    set_condition(c, "Ready", *ready, now, gen)
    set_condition(c, "Succeeded", phase == "Succeeded", "AllStagesSucceeded" if phase == "Succeeded" else
                  ("StageFailed" if phase == "Failed" else "InProgress"),
                  "every stage succeeded" if phase == "Succeeded" else "", now, gen)
    set_condition(c, "Failed", phase == "Failed", "StageFailed" if phase == "Failed" else "NoFailure",
                  failed_msg or "", now, gen)
    suspended = spec.suspend and phase not in ("Succeeded", "Failed")
    set_condition(c, "Suspended", suspended, "SuspendedByUser" if suspended else "NotSuspended",
                  "spec.suspend is true: the current Job is suspended" if suspended else "", now, gen)
    if sandbox is not None:
        if not sandbox.exists:
            set_condition(c, "SandboxReady", False, "SandboxNotFound", f"Sandbox {spec.sandbox.name!r} does not exist", now, gen)
        elif not sandbox.ready:
            set_condition(c, "SandboxReady", False, "SandboxNotReady", f"Sandbox {spec.sandbox.name!r} has no ready replica", now, gen)
        else:
            set_condition(c, "SandboxReady", True, "SandboxReady", f"Sandbox {spec.sandbox.name!r} is ready", now, gen)
    if refused:
        set_condition(c, "SpecValid", False, "FinishedStageChanged", f"spec change refused: {refused}", now, gen)
    else:
        set_condition(c, "SpecValid", True, "Accepted", "", now, gen)


def _transition_events(run: api.TrainingRun, prev: api.TrainingRunStatus, st: api.TrainingRunStatus, plan: Plan) -> list[Event]:
    events: list[Event] = []
    old = {s.name: s for s in prev.stages}
    created = dict(plan.create)
    for s in st.stages:
        o = old.get(s.name) or api.StageStatus(name=s.name)
        if s.name in created:
            what = f"stage {s.name}: created Job {run.metadata.name}-{s.name}-{created[s.name]} (attempt {created[s.name]})"
            if created[s.name] > 1:
                events.append(Event("Warning", "StageRetrying", f"{what} after: {s.message}"))
            else:
                events.append(Event("Normal", "StageStarted", what))
        elif s.phase == "Running" and o.phase != "Running":  # adopted: created by an earlier pass
            events.append(Event("Normal", "StageStarted", f"stage {s.name}: Job {run.metadata.name}-{s.name}-{s.attempts} "
                                f"is running (attempt {s.attempts})"))
        elif s.phase == "Running" and s.message and s.message != o.message:
            events.append(Event("Warning", "StageAttemptFailed", f"stage {s.name}: {s.message}; retrying with backoff"))
        if s.phase != o.phase and s.phase == "Succeeded":  # before the next stage's start
            events.insert(0, Event("Normal", "StageSucceeded", f"stage {s.name} succeeded" +
                                   (f"; artifacts at {s.artifact_uri}" if s.artifact_uri else "")))
        if s.phase != o.phase and s.phase == "Failed":
            events.append(Event("Warning", "StageFailed", f"stage {s.name}: {s.message}"))
    for job, suspend in plan.suspend:
        events.append(Event("Normal", "Suspended" if suspend else "Resumed",
                            f"{'suspended' if suspend else 'resumed'} Job {job}"))
    if st.phase != prev.phase:
        reason = {"Succeeded": "RunSucceeded", "Failed": "RunFailed", "Suspended": "RunSuspended",
                  "Running": "RunRunning", "Pending": "RunPending"}[st.phase]
        failed = get_condition(st, "Failed")
        msg = {"Succeeded": "every stage succeeded", "Failed": failed.message if failed else "",
               }.get(st.phase, f"phase {prev.phase} → {st.phase} (stage {st.current_stage})")
        events.append(Event("Warning" if st.phase == "Failed" else "Normal", reason, msg or st.phase))
    for type_ in ("SandboxReady", "SpecValid"):
        new_c, old_c = get_condition(st, type_), get_condition(prev, type_)
        if new_c and new_c.status == "False" and (old_c is None or old_c.status != "False" or old_c.reason != new_c.reason):
            events.append(Event("Warning", new_c.reason, new_c.message))
    return events

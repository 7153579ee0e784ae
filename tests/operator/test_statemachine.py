"""Unit tests of the stage state machine: what a user sees in status and Events as Jobs progress."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from codeground.operator.observe import JobView, observe_jobs
from codeground.operator.statemachine import SandboxState, decide, refused_change
from codeground.pipeline import spec as api
from codeground.pipeline import specio
from tests.operator.conftest import run_doc

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
READY = SandboxState(exists=True, ready=True)


def _cond(status, type_):
    return next(c for c in status.conditions if c.type == type_)


def step(run, prev, jobs, config, now=NOW, sandbox=READY):
    return decide(run, 1, prev, jobs, sandbox, now, config)


def test_first_reconcile_creates_the_first_stage_attempt(run, config):
    plan = step(run, api.TrainingRunStatus(), {}, config)
    assert plan.create == [("sft", 1)]
    st = plan.status
    assert (st.phase, st.current_stage, st.observed_generation) == ("Running", "sft", 1)
    assert [s.phase for s in st.stages] == ["Running", "Pending", "Pending"]
    assert [e.reason for e in plan.events] == ["StageStarted", "RunRunning"]
    # the same observation again plans nothing new (idempotent)
    again = step(run, st, {"sft": [JobView("demo-sft-1", "sft", 1, "active")]}, config)
    assert again.create == [] and again.events == [] and again.status == st


def test_success_records_artifact_and_starts_next_stage(run, config):
    st = step(run, api.TrainingRunStatus(), {}, config).status
    done = JobView("demo-sft-1", "sft", 1, "succeeded", finished_at="2025-01-01T12:00:00Z",
                   artifact_uri="s3://bucket/runs/demo/sft/manifest.json", metrics={"loss": 0.5})
    plan = step(run, st, {"sft": [done]}, config)
    assert plan.create == [("grpo", 1)]
    sft = plan.status.stages[0]
    assert sft.phase == "Succeeded" and sft.artifact_uri.endswith("manifest.json") and sft.metrics == {"loss": 0.5}
    assert plan.status.current_stage == "grpo"
    assert {"StageSucceeded", "StageStarted"} <= {e.reason for e in plan.events}


def test_failure_retries_with_backoff_then_fails_the_run(run, config):
    st = step(run, api.TrainingRunStatus(), {}, config).status
    failed1 = JobView("demo-sft-1", "sft", 1, "failed", finished_at="2025-01-01T12:00:00Z", error="OOMKilled")
    plan = step(run, st, {"sft": [failed1]}, config)
    assert plan.create == [] and 9 < plan.requeue_after <= 10
    assert "StageAttemptFailed" in {e.reason for e in plan.events}
    plan = step(run, plan.status, {"sft": [failed1]}, config, now=NOW + timedelta(seconds=11))
    assert plan.create == [("sft", 2)] and plan.status.stages[0].attempts == 2
    assert "StageRetrying" in {e.reason for e in plan.events}
    failed2 = JobView("demo-sft-2", "sft", 2, "failed", finished_at="2025-01-01T12:00:20Z", error="OOMKilled")
    plan = step(run, plan.status, {"sft": [failed1, failed2]}, config, now=NOW + timedelta(seconds=30))
    assert plan.create == []
    st = plan.status
    assert st.phase == "Failed" and st.stages[0].phase == "Failed"
    assert _cond(st, "Failed").status == "True" and "OOMKilled" in _cond(st, "Failed").message
    assert _cond(st, "Ready").reason == "StageFailed"
    assert {"StageFailed", "RunFailed"} <= {e.reason for e in plan.events}


def test_permanent_failure_is_not_retried(run, config):
    st = step(run, api.TrainingRunStatus(), {}, config).status
    bad = JobView("demo-sft-1", "sft", 1, "failed", error="invalid spec", permanent=True)
    plan = step(run, st, {"sft": [bad]}, config)
    assert plan.create == [] and plan.status.phase == "Failed"


def test_suspend_suspends_the_job_and_resume_unsuspends(config):
    run = specio.parse_object(run_doc(suspend=True))
    active = JobView("demo-sft-1", "sft", 1, "active")
    prev = api.TrainingRunStatus(phase="Running", stages=[api.StageStatus(name="sft", phase="Running", attempts=1)])
    plan = step(run, prev, {"sft": [active]}, config)
    assert plan.suspend == [("demo-sft-1", True)] and plan.status.phase == "Suspended"
    assert _cond(plan.status, "Suspended").status == "True"
    resumed = specio.parse_object(run_doc())
    plan2 = step(resumed, plan.status, {"sft": [JobView("demo-sft-1", "sft", 1, "active", suspended=True)]}, config)
    assert plan2.suspend == [("demo-sft-1", False)] and plan2.status.phase == "Running"
    assert plan2.create == []


def test_suspended_at_creation_creates_nothing(config):
    run = specio.parse_object(run_doc(suspend=True))
    plan = step(run, api.TrainingRunStatus(), {}, config)
    assert plan.create == [] and plan.status.phase == "Suspended"


def test_missing_sandbox_waits_with_a_condition(config):
    doc = run_doc()
    doc["spec"]["stages"] = doc["spec"]["stages"][1:]  # grpo first: needs the sandbox
    run = specio.parse_object(doc)
    plan = step(run, api.TrainingRunStatus(), {}, config, sandbox=SandboxState(exists=False))
    assert plan.create == [] and plan.status.phase == "Pending"
    assert _cond(plan.status, "Ready").reason == "SandboxNotFound"
    assert _cond(plan.status, "SandboxReady").status == "False"
    assert "SandboxNotFound" in {e.reason for e in plan.events}
    plan = step(run, plan.status, {}, config)
    assert plan.create == [("grpo", 1)]


def test_all_stages_succeeded_and_ttl_cleanup(config):
    run = specio.parse_object(run_doc(ttlSecondsAfterFinished=60))
    jobs = {s: [JobView(f"demo-{s}-1", s, 1, "succeeded", finished_at="2025-01-01T12:00:00Z",
                        metrics={"reward": 0.7} if s == "grpo" else {})] for s in ("sft", "grpo", "evaluate")}
    plan = step(run, api.TrainingRunStatus(), jobs, config)
    assert plan.status.phase == "Succeeded" and plan.status.reward == 0.7
    assert _cond(plan.status, "Succeeded").status == "True"
    assert not plan.cleanup and 59 <= plan.requeue_after <= 60
    later = step(run, plan.status, jobs, config, now=NOW + timedelta(seconds=61))
    assert later.cleanup
    gone = step(run, later.status, {}, config, now=NOW + timedelta(seconds=62))
    assert gone.status.phase == "Succeeded" and not gone.cleanup and gone.create == []


def test_progress_and_reward_of_running_stage(run, config):
    prev = step(run, api.TrainingRunStatus(), {}, config).status
    jobs = {"sft": [JobView("demo-sft-1", "sft", 1, "succeeded")],
            "grpo": [JobView("demo-grpo-1", "grpo", 1, "active", progress="12/80", progress_metrics={"reward": 0.25})]}
    st = step(run, prev, jobs, config).status
    assert (st.current_stage, st.progress, st.reward) == ("grpo", "12/80", 0.25)


def test_change_to_a_succeeded_stage_is_refused(run):
    changed = specio.parse_object(run_doc())
    changed.spec.stages[0].resources.gpus = 4
    assert refused_change(run.spec, changed.spec, {"sft"}) is not None
    assert refused_change(run.spec, changed.spec, set()) is None
    other = specio.parse_object(run_doc())
    other.spec.stages[2].evaluate.samples = 4
    assert refused_change(run.spec, other.spec, {"sft"}) is None


def test_observe_reads_termination_message_and_progress():
    job = {"metadata": {"name": "demo-sft-1", "labels": {"codeground.dev/stage": "sft"}},
           "status": {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "2025-01-01T12:00:00Z"}}
    pod = {"metadata": {"name": "demo-sft-1-abc", "labels": {"job-name": "demo-sft-1"}},
           "status": {"containerStatuses": [{"state": {"terminated": {
               "exitCode": 0, "message": '{"artifactURI":"s3://b/m.json","metrics":{"loss":1.5}}'}}}]}}
    view = observe_jobs("demo", [job], [pod])["sft"][0]
    assert view.state == "succeeded" and view.artifact_uri == "s3://b/m.json" and view.metrics == {"loss": 1.5}
    failed = {"metadata": {"name": "demo-sft-2", "labels": {"codeground.dev/stage": "sft"}},
              "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    fpod = {"metadata": {"name": "demo-sft-2-x", "labels": {"job-name": "demo-sft-2"}},
            "status": {"containerStatuses": [{"state": {"terminated": {
                "exitCode": 2, "message": '{"error":"spec.stages[0]: bad","permanent":true}'}}}]}}
    v2 = observe_jobs("demo", [failed], [fpod])["sft"][0]
    assert v2.permanent and "bad" in v2.error
    running = {"metadata": {"name": "demo-sft-3", "labels": {"codeground.dev/stage": "sft"}}, "status": {}}
    rpod = {"metadata": {"name": "demo-sft-3-y", "labels": {"job-name": "demo-sft-3"},
                         "annotations": {"codeground.dev/progress": '{"progress":"3/9","metrics":{"reward":0.5}}'}}}
    v3 = observe_jobs("demo", [running], [rpod])["sft"][0]
    assert v3.progress == "3/9" and v3.progress_metrics == {"reward": 0.5}

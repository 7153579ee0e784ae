"""Turn a run's Jobs and Pods (as the API returns them) into small, typed observations.

Pure: called by :mod:`codeground.operator.runs` with the dicts it listed, and by the tests with
hand-written dicts. The Jobs are the durable record of what happened (one Job per stage attempt,
named ``<run>-<stage>-<attempt>``); the Pods add the termination message (artifact URI, metrics or
error, written by ``codeground stage run``) and the progress annotation of a running stage.

What it does not guarantee: a result for a Job whose Pods are already gone (the stage is then
recorded as succeeded without artifact URI and metrics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from . import labels as L

JobState = Literal["active", "succeeded", "failed"]
PERMANENT_EXIT_CODE = 2  # `codeground stage run` exits 2 for an invalid spec: retrying cannot help


@dataclass
class JobView:
    """One stage attempt as observed."""

    name: str
    stage: str
    attempt: int
    state: JobState
    suspended: bool = False
    deleting: bool = False
    start_time: str | None = None
    finished_at: str | None = None
    artifact_uri: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    permanent: bool = False
    progress: str | None = None
    progress_metrics: dict[str, float] = field(default_factory=dict)


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def _floats(values: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(values, dict):
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[str(k)] = float(v)
    return out


def _rank(pod: dict[str, Any]) -> int:
    ann = pod["metadata"].get("annotations") or {}
    idx = ann.get("batch.kubernetes.io/job-completion-index", "0")
    return int(idx) if str(idx).isdigit() else 0


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return term
    return None


def parse_termination(term: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The JSON the stage wrote to its termination log (or {}) and a one-line description."""
    message = term.get("message") or ""
    try:
        doc = json.loads(message) if message.strip().startswith("{") else {}
    except ValueError:
        doc = {}
    text = doc.get("error") if isinstance(doc, dict) else None
    if not text:
        text = message.strip() if message.strip() and not doc else ""
    code = term.get("exitCode")
    desc = f"exit code {code}" + (f" ({term.get('reason')})" if term.get("reason") else "")
    return (doc if isinstance(doc, dict) else {}), (f"{text} [{desc}]" if text else desc)


def observe_job(run: str, job: dict[str, Any], pods: list[dict[str, Any]]) -> JobView | None:
    """Observation of one Job and its pods; None for a Job that is not a stage attempt of ``run``."""
    meta = job["metadata"]
    stage = (meta.get("labels") or {}).get(L.STAGE_LABEL)
    attempt = L.parse_attempt(run, stage, meta["name"]) if stage else None
    if stage is None or attempt is None:
        return None
    status = job.get("status") or {}
    done, failed = _condition(job, "Complete"), _condition(job, "Failed")
    state: JobState = "succeeded" if done else "failed" if failed else "active"
    view = JobView(meta["name"], stage, attempt, state, suspended=bool((job.get("spec") or {}).get("suspend")),
                   deleting=bool(meta.get("deletionTimestamp")), start_time=status.get("startTime"))
    mine = sorted((p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == meta["name"]
                   or (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == meta["name"]), key=_rank)
    if state == "succeeded":
        view.finished_at = status.get("completionTime") or done.get("lastTransitionTime")  # type: ignore[union-attr]
        for pod in mine:
            term = _terminated(pod)
            if term and term.get("exitCode") == 0:
                doc, _ = parse_termination(term)
                view.artifact_uri = doc.get("artifactURI")
                view.metrics = _floats(doc.get("metrics"))
                break
    elif state == "failed":
        view.finished_at = failed.get("lastTransitionTime")  # type: ignore[union-attr]
        view.error = failed.get("message") or failed.get("reason") or "Job failed"  # type: ignore[union-attr]
        for pod in mine:
            term = _terminated(pod)
            if term and term.get("exitCode") not in (None, 0):
                doc, desc = parse_termination(term)
                view.error = f"pod {pod['metadata']['name']}: {desc}"
                view.permanent = bool(doc.get("permanent")) or term.get("exitCode") == PERMANENT_EXIT_CODE
                break
    else:
        for pod in mine:
            raw = (pod["metadata"].get("annotations") or {}).get(L.PROGRESS_ANNOTATION)
            if raw:
                try:
                    doc = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(doc, dict):
                    view.progress = str(doc.get("progress"))[:64] if doc.get("progress") is not None else None
                    view.progress_metrics = _floats(doc.get("metrics"))
                    break
    return view


def observe_jobs(run: str, jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> dict[str, list[JobView]]:
    """Stage name → its attempts, oldest first."""
    out: dict[str, list[JobView]] = {}
    for job in jobs:
        view = observe_job(run, job, pods)
        if view is not None:
            out.setdefault(view.stage, []).append(view)
    for views in out.values():
        views.sort(key=lambda v: v.attempt)
    return out

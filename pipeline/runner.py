"""Run a TrainingRun's stages in order on this machine: ``codeground run FILE``.

The embedded counterpart of the operator: it walks the same stages, records status in the same
shape as the CRD status (``<artifacts>/<run>/status.json``), commits each stage's outputs and
manifest to the artifact store, and with ``resume`` skips stages whose manifest is already there.
The pod entrypoint (``codeground stage run``) uses :func:`run_one_stage` for a single stage.

If a stage needs the interpreter and no ``CODEGROUND_SANDBOX_URL`` is set, a local sandbox service
is started for the whole run with the spec's inline limits.

What it does not do: parallel stages, or retries (``backoffLimit`` is the operator's business).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from . import spec as api
from .errors import CodegroundError, StageError
from .stagekit import NEEDS_SANDBOX, ProgressReporter, StageContext, run_stage
from .store import ArtifactStore, Manifest, now_rfc3339, open_store

log = logging.getLogger(__name__)


def open_run_store(run: api.TrainingRun, out: str | Path | None = None, base_dir: str | Path | None = None) -> ArtifactStore:
    """The run's artifact store: ``out`` (a local folder or s3:// URI) overrides spec.artifacts.uri."""
    uri = str(out) if out is not None else run.spec.artifacts.uri
    return open_store(uri, endpoint=run.spec.artifacts.endpoint, base_dir=base_dir)


def _status_key(run: api.TrainingRun) -> str:
    return f"{run.metadata.name}/status.json"


def load_status(store: ArtifactStore, run: api.TrainingRun) -> api.TrainingRunStatus:
    key = _status_key(run)
    if store.exists(key):
        return api.TrainingRunStatus.model_validate_json(store.get_bytes(key))
    return api.TrainingRunStatus(stages=[api.StageStatus(name=s.name) for s in run.spec.stages])


def save_status(store: ArtifactStore, run: api.TrainingRun, status: api.TrainingRunStatus) -> None:
    store.put_bytes(_status_key(run), json.dumps(status.model_dump(by_alias=True, exclude_none=True), indent=2).encode())


def _set_condition(status: api.TrainingRunStatus, type_: str, ok: bool, reason: str, message: str = "") -> None:
    value: Literal["True", "False"] = "True" if ok else "False"
    for c in status.conditions:
        if c.type == type_:
            if c.status != value or c.reason != reason:
                c.last_transition_time = now_rfc3339()
            c.status, c.reason, c.message = value, reason, message
            return
    status.conditions.append(api.Condition(type=type_, status=value, reason=reason, message=message,
                                           last_transition_time=now_rfc3339()))


@contextlib.contextmanager
def _sandbox_for(run: api.TrainingRun, stages: list[api.StageSpec]) -> Iterator[str | None]:
    if not any(s.type in NEEDS_SANDBOX for s in stages):
        yield None
        return
    url = os.environ.get("CODEGROUND_SANDBOX_URL")
    if url:
        yield url
        return
    from .sandbox.config import SandboxConfig
    from .sandbox.local import local_sandbox

    limits = run.spec.sandbox.limits or api.SandboxLimits()
    config = SandboxConfig.from_limits(limits.model_dump(by_alias=True))
    unsafe = os.environ.get("CODEGROUND_UNSAFE_NO_ISOLATION") == "1"
    with local_sandbox(config, unsafe_no_isolation=unsafe) as endpoint:
        yield endpoint


def _workdir(store: ArtifactStore, run: api.TrainingRun, stage: api.StageSpec, work_root: Path | None) -> Path:
    root = work_root or Path(os.environ.get("CODEGROUND_WORKDIR", Path.home() / ".cache" / "codeground" / "work"))
    return Path(root) / run.metadata.name / stage.name


def _upstream(store: ArtifactStore, run: api.TrainingRun, stage: api.StageSpec) -> dict[str, Manifest]:
    out: dict[str, Manifest] = {}
    for s in run.spec.stages:
        if s.name == stage.name:
            break
        manifest = store.read_manifest(run.metadata.name, s.name)
        if manifest is None:
            raise StageError(f"stage {stage.name!r} needs stage {s.name!r} to be complete first (no manifest in {store.root_uri})")
        out[s.name] = manifest
    return out


def run_one_stage(run: api.TrainingRun, stage: api.StageSpec, store: ArtifactStore, *, sandbox_endpoint: str | None,
                  resume: bool, progress: ProgressReporter | None = None, work_root: Path | None = None) -> str:
    ctx = StageContext(
        run=run,
        stage=stage,
        store=store,
        workdir=_workdir(store, run, stage, work_root),
        upstream=_upstream(store, run, stage),
        sandbox_endpoint=sandbox_endpoint,
        resume=resume,
        progress=progress or ProgressReporter(),
    )
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    if not resume:  # a fresh attempt starts from an empty output folder
        import shutil

        shutil.rmtree(ctx.workdir / "out", ignore_errors=True)
    return run_stage(ctx)


def run_pipeline(run: api.TrainingRun, store: ArtifactStore, *, only_stage: str | None = None, resume: bool = False,
                 work_root: Path | None = None) -> api.TrainingRunStatus:
    """Run the stages in order; returns the final status (also saved to the store)."""
    if only_stage is not None:
        run.spec.stage(only_stage)  # KeyError → caller reports the bad name
    status = load_status(store, run) if resume else api.TrainingRunStatus(
        stages=[api.StageStatus(name=s.name) for s in run.spec.stages])
    by_name = {s.name: s for s in status.stages}
    for s in run.spec.stages:  # the spec may have gained stages since the status was written
        by_name.setdefault(s.name, api.StageStatus(name=s.name))
    status.stages = [by_name[s.name] for s in run.spec.stages]
    status.observed_generation = 1
    todo = [s for s in run.spec.stages if only_stage is None or s.name == only_stage]
    status.phase = "Running"
    save_status(store, run, status)
    with _sandbox_for(run, [s for s in todo if not (resume and by_name[s.name].phase == "Succeeded")]) as endpoint:
        for stage in todo:
            st = by_name[stage.name]
            if resume and st.phase == "Succeeded" and store.read_manifest(run.metadata.name, stage.name) is not None:
                log.info("stage %s already complete, skipping (--resume)", stage.name)
                continue
            st.phase, st.attempts, st.start_time = "Running", st.attempts + 1, now_rfc3339()
            st.completion_time, st.message = None, None
            status.current_stage = stage.name

            def sink(state: dict, st: api.StageStatus = st) -> None:
                st.progress = state["progress"]
                st.metrics.update(state["metrics"])
                status.progress = state["progress"]
                if "reward" in state["metrics"]:
                    status.reward = state["metrics"]["reward"]
                save_status(store, run, status)

            save_status(store, run, status)
            try:
                uri = run_one_stage(run, stage, store, sandbox_endpoint=endpoint, resume=resume,
                                    progress=ProgressReporter([sink]), work_root=work_root)
            except (CodegroundError, Exception) as exc:
                st.phase, st.completion_time = "Failed", now_rfc3339()
                st.message = str(exc) if isinstance(exc, CodegroundError) else f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, CodegroundError):
                    log.error("stage %s crashed:\n%s", stage.name, traceback.format_exc())
                status.phase = "Failed"
                _set_condition(status, "Failed", True, "StageFailed", f"stage {stage.name}: {st.message}")
                _set_condition(status, "Succeeded", False, "StageFailed")
                save_status(store, run, status)
                return status
            manifest = store.read_manifest(run.metadata.name, stage.name)
            st.phase, st.completion_time, st.artifact_uri = "Succeeded", now_rfc3339(), uri
            st.metrics = dict(manifest.metrics) if manifest else {}
            save_status(store, run, status)
    if all(s.phase == "Succeeded" for s in status.stages):
        status.phase = "Succeeded"
        _set_condition(status, "Succeeded", True, "AllStagesSucceeded", "every stage completed")
    else:
        status.phase = "Pending" if only_stage else "Running"
    save_status(store, run, status)
    return status

"""The entrypoint of every stage pod: ``codeground stage run --spec FILE --stage NAME``.

The operator mounts the TrainingRun (as the API server stored it) from a ConfigMap, passes the
artifact store, sandbox endpoint and credentials in the environment, and starts one Job per stage
attempt. This module runs that one stage through the same code as ``codeground run`` and reports:

- progress while running: JSON lines to ``$CODEGROUND_PROGRESS_FILE`` if set;
- the result: ``{"artifactURI": ..., "metrics": {...}}`` (or ``{"error": ...}``) as the container's
  termination message (``$CODEGROUND_TERMINATION_LOG``, default ``/dev/termination-log``), which the
  kubelet copies into the pod status, so the operator reads it without exec'ing into the pod.

Exit codes: 0 success, 2 invalid spec (retrying cannot help), 1 any other failure.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .errors import CodegroundError, SpecError
from .runner import open_run_store, run_one_stage
from .specio import load_training_run
from .stagekit import NEEDS_SANDBOX, ProgressReporter

log = logging.getLogger(__name__)
TERMINATION_LOG_MAX = 4000  # the kubelet keeps at most 4096 bytes


def _write_termination(doc: dict[str, Any]) -> None:
    path = Path(os.environ.get("CODEGROUND_TERMINATION_LOG", "/dev/termination-log"))
    text = json.dumps(doc, separators=(",", ":"))
    if len(text) > TERMINATION_LOG_MAX:
        doc = {k: v for k, v in doc.items() if k != "metrics"} | {"metrics": {}}
        text = json.dumps(doc, separators=(",", ":"))[:TERMINATION_LOG_MAX]
    try:
        path.write_text(text)
    except OSError as exc:
        log.warning("cannot write termination message to %s: %s", path, exc)


def _progress_sinks() -> list:
    sinks = []
    progress_file = os.environ.get("CODEGROUND_PROGRESS_FILE")
    if progress_file:
        def to_file(state: dict[str, Any]) -> None:
            with open(progress_file, "a") as f:
                f.write(json.dumps(state) + "\n")
        sinks.append(to_file)
    pod_sink = _pod_annotation_sink()
    if pod_sink is not None:
        sinks.append(pod_sink)
    return sinks


PROGRESS_ANNOTATION = "codeground.dev/progress"  # read by the operator (codeground.operator.labels)


def _pod_annotation_sink() -> Any:
    """In a pod the operator started: patch our own Pod's ``codeground.dev/progress`` annotation.

    The operator watches it and shows progress and the latest reward in the TrainingRun's status (and
    so in ``kubectl get trainingruns``) without exec'ing into the pod. Needs POD_NAME/POD_NAMESPACE
    (downward API) and the ``kubernetes`` package with in-cluster credentials (the namespaced
    ``codeground-stage`` ServiceAccount may get/patch pods); anywhere else there is simply no sink.
    """
    name, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if not name or not namespace:
        return None
    try:
        from kubernetes import client, config
    except ImportError:
        log.info("kubernetes package not installed: progress is not reported to the operator")
        return None
    try:
        config.load_incluster_config()
    except config.ConfigException as exc:
        log.info("no in-cluster credentials (%s): progress is not reported to the operator", exc)
        return None
    core = client.CoreV1Api()

    def to_pod(state: dict[str, Any]) -> None:
        value = json.dumps({"progress": state.get("progress"), "metrics": state.get("metrics") or {}},
                           separators=(",", ":"))
        core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": {PROGRESS_ANNOTATION: value}}},
                                  _request_timeout=10)

    return to_pod


def run_stage_entrypoint(spec_path: str, stage_name: str, *, resume: bool = True, out: str | None = None) -> int:
    try:
        run = load_training_run(spec_path)
        try:
            stage = run.spec.stage(stage_name)
        except KeyError:
            raise SpecError([("--stage", f"no stage named {stage_name!r}")], spec_path) from None
        store = open_run_store(run, out or os.environ.get("CODEGROUND_ARTIFACTS_URI"))
        endpoint = os.environ.get("CODEGROUND_SANDBOX_URL")
        if stage.type in NEEDS_SANDBOX and not endpoint:
            raise SpecError([("CODEGROUND_SANDBOX_URL", f"stage type {stage.type} needs a sandbox endpoint")], spec_path)
        uri = run_one_stage(run, stage, store, sandbox_endpoint=endpoint, resume=resume,
                            progress=ProgressReporter(_progress_sinks()))
        manifest = store.read_manifest(run.metadata.name, stage.name)
        _write_termination({"artifactURI": uri, "metrics": manifest.metrics if manifest else {}})
        return 0
    except SpecError as exc:
        _write_termination({"error": exc.format(), "permanent": True})
        print(exc.format())
        return 2
    except CodegroundError as exc:
        _write_termination({"error": str(exc)})
        print(f"error: {exc}")
        return 1

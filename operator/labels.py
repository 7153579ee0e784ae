"""Label and annotation keys, child-object names and selectors shared by the operator's modules.

Pure constants and string functions; the builders, the state machine and the handlers import them so
every object name and selector is spelled once. Names are deterministic (``<run>-<stage>-<attempt>``),
which is what makes reconciling idempotent: a second create of the same attempt answers 409.

What it does not guarantee: that names fit 63 characters for inputs the API does not bound (the CRD
limits run names to 40 and stage names to 16 characters, which keeps every name here within limits).
"""

from __future__ import annotations

DOMAIN = "codeground.dev"

RUN_LABEL = f"{DOMAIN}/run"
STAGE_LABEL = f"{DOMAIN}/stage"
ATTEMPT_LABEL = f"{DOMAIN}/attempt"
SANDBOX_LABEL = f"{DOMAIN}/sandbox"
"""On Sandbox pods: the pool they belong to. On stage pods: the pool they may talk to (NetworkPolicy)."""
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGER = "codeground-operator"

PROGRESS_ANNOTATION = f"{DOMAIN}/progress"
"""Set by a running stage on its own Pod: JSON ``{"progress": "12/80", "metrics": {...}}``."""
SPEC_HASH_ANNOTATION = f"{DOMAIN}/spec-hash"
"""On the run's ConfigMap: hash of the accepted spec it holds."""

STAGE_SERVICE_ACCOUNT = "codeground-stage"
"""Namespaced ServiceAccount of stage pods; its Role only allows reading and patching pods (progress)."""

SPEC_MOUNT_DIR = "/etc/codeground"
SPEC_FILE = "run.yaml"
SANDBOX_PORT = 8080
MASTER_PORT = 29500
GPU_RESOURCE = "nvidia.com/gpu"


def job_name(run: str, stage: str, attempt: int) -> str:
    """Name of the Job of one stage attempt (attempts count from 1)."""
    return f"{run}-{stage}-{attempt}"


def parse_attempt(run: str, stage: str, job: str) -> int | None:
    """The attempt number encoded in ``job``'s name, or None when it is not one of this stage's Jobs."""
    prefix = f"{run}-{stage}-"
    tail = job[len(prefix):] if job.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


def stage_service_name(run: str, stage: str) -> str:
    """Headless Service that gives the pods of a multi-node stage stable DNS names."""
    return f"{run}-{stage}"


def spec_configmap_name(run: str) -> str:
    return f"{run}-spec"


def run_labels(run: str) -> dict[str, str]:
    return {RUN_LABEL: run, MANAGED_BY_LABEL: MANAGER, PART_OF_LABEL: "codeground"}


def stage_labels(run: str, stage: str, attempt: int | None = None) -> dict[str, str]:
    labels = run_labels(run) | {STAGE_LABEL: stage, COMPONENT_LABEL: "stage"}
    if attempt is not None:
        labels[ATTEMPT_LABEL] = str(attempt)
    return labels


def sandbox_labels(sandbox: str) -> dict[str, str]:
    return {SANDBOX_LABEL: sandbox, MANAGED_BY_LABEL: MANAGER, PART_OF_LABEL: "codeground", COMPONENT_LABEL: "sandbox"}


def sandbox_selector(sandbox: str) -> dict[str, str]:
    """Labels that select exactly the pods of one Sandbox pool."""
    return {SANDBOX_LABEL: sandbox, COMPONENT_LABEL: "sandbox"}


def selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def sandbox_endpoint(sandbox: str, namespace: str) -> str:
    """URL stages use to reach a Sandbox pool (its headless Service)."""
    return f"http://{sandbox}.{namespace}.svc:{SANDBOX_PORT}"

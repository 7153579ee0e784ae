"""Operator-wide settings: default images, timeouts and tuning knobs, read once from the environment.

Built by ``codeground operator run`` (:mod:`codeground.operator.cli`) and passed to the builders and
the reconcilers. Every field has a default that works on the test bed; the chart sets the images.

What it does not do: validate that images exist or can be pulled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass(frozen=True)
class OperatorConfig:
    """Settings of one operator process (environment variable in brackets)."""

    # Image of stage pods when a stage names none [CODEGROUND_TRAINER_IMAGE].
    trainer_image: str = "ghcr.io/codeground/trainer:0.1.0"
    # Image of Sandbox pods when a Sandbox names none [CODEGROUND_SANDBOX_IMAGE].
    sandbox_image: str = "ghcr.io/codeground/sandbox:0.1.0"
    # First retry delay of a failed stage; doubles per attempt up to retry_max [CODEGROUND_RETRY_BASE_SECONDS].
    retry_base: float = 10.0
    retry_max: float = 600.0
    # Resync every object this often even without events (missed events, clock-driven work).
    resync_seconds: float = 300.0
    # Reconcile workers (each runs one object at a time; one object never runs on two workers).
    workers: int = 4
    # Server-side watch timeout, so a silently dropped watch is re-established [CODEGROUND_WATCH_TIMEOUT].
    watch_timeout: int = 300
    # Extra labels for every stage pod template (e.g. to match a cluster's scheduling policies).
    extra_pod_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        d = cls()
        return cls(
            trainer_image=os.environ.get("CODEGROUND_TRAINER_IMAGE", d.trainer_image),
            sandbox_image=os.environ.get("CODEGROUND_SANDBOX_IMAGE", d.sandbox_image),
            retry_base=_env_float("CODEGROUND_RETRY_BASE_SECONDS", d.retry_base),
            retry_max=_env_float("CODEGROUND_RETRY_MAX_SECONDS", d.retry_max),
            resync_seconds=_env_float("CODEGROUND_RESYNC_SECONDS", d.resync_seconds),
            workers=int(_env_float("CODEGROUND_WORKERS", d.workers)),
            watch_timeout=int(_env_float("CODEGROUND_WATCH_TIMEOUT", d.watch_timeout)),
        )

    def retry_delay(self, failed_attempts: int) -> float:
        """Seconds to wait before the attempt after ``failed_attempts`` failures (1, 2, ...)."""
        return min(self.retry_max, self.retry_base * 2 ** max(0, failed_attempts - 1))

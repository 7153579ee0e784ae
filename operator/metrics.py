"""Prometheus metrics of the operator: reconciles, errors, latency, queue depth, API calls.

Module-level collectors in the default registry; :func:`serve` (called by ``codeground operator
run``) exposes them on ``/metrics``. The work queue and :mod:`codeground.operator.kube` update them.

What it does not do: push anywhere; Prometheus scrapes the port.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("codeground_operator_reconciles_total", "Reconciles run.", ["kind", "result"])
RECONCILE_ERRORS = Counter("codeground_operator_reconcile_errors_total", "Reconciles that raised.", ["kind", "error"])
RECONCILE_SECONDS = Histogram(
    "codeground_operator_reconcile_duration_seconds", "Time one reconcile took.", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_DEPTH = Gauge("codeground_operator_queue_depth", "Objects waiting for a reconcile.")
API_CALLS = Counter("codeground_operator_api_calls_total", "Calls to the API server.", ["verb", "code"])
JOBS_CREATED = Counter("codeground_operator_jobs_created_total", "Stage Jobs created.")


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Expose /metrics on ``addr:port`` from a daemon thread."""
    start_http_server(port, addr=addr)

"""Prometheus metrics of one sandbox server, served on GET /metrics.

Who calls it: the session manager and the pool record into a :class:`SandboxMetrics`; the service
renders it. Each app gets its own registry so several servers can live in one process (tests).

What it does not guarantee: anything about other replicas -- aggregate across pods in Prometheus.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class SandboxMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.executions = Counter("codeground_sandbox_executions_total", "Cells executed, by reply status",
                                  ["status"], registry=r)
        self.execute_seconds = Histogram("codeground_sandbox_execute_seconds", "Wall clock of one cell",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.sessions_created = Counter("codeground_sandbox_sessions_created_total", "Sessions created",
                                        ["warm"], registry=r)
        self.sessions_closed = Counter("codeground_sandbox_sessions_closed_total", "Sessions closed, by reason",
                                       ["reason"], registry=r)
        self.sessions_rejected = Counter("codeground_sandbox_sessions_rejected_total",
                                         "Session creations refused with 429 (server full)", registry=r)
        self.restarts = Counter("codeground_sandbox_session_restarts_total",
                                "Interpreters killed and replaced, by reason", ["reason"], registry=r)
        self.sessions_open = Gauge("codeground_sandbox_sessions_open", "Open sessions", registry=r)
        self.pool_ready = Gauge("codeground_sandbox_pool_ready", "Warm interpreters ready", registry=r)
        self.boot_seconds = Histogram("codeground_sandbox_boot_seconds", "Time to boot one sandboxed interpreter",
                                      ["ok"], buckets=_LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

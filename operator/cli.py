"""``codeground operator run``: start the operator in this process (kopf with our registry).

Registered through the ``codeground.cli`` entry-point group (pyproject), so the pipeline never
imports the operator. Usage::

    codeground operator run --all-namespaces                # in the cluster (the chart's Deployment)
    codeground operator run --namespace team-a --kubeconfig ~/.kube/config   # from a laptop

Liveness is served on ``--liveness`` (``/healthz``), Prometheus metrics on ``--metrics-port``.
Peering is off by default (``--standalone``): run exactly one replica (the chart uses a Recreate
strategy), so two operators never reconcile the same object.

What it does not do: install the CRDs (``kubectl apply -f crds/`` or the chart does).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any


def _run(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        # Before anything imports `kubernetes`: its default kubeconfig path is read at import time.
        os.environ["KUBECONFIG"] = os.path.abspath(args.kubeconfig)
    import kopf

    from . import metrics
    from .config import OperatorConfig
    from .handlers import registry

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kopf.objects", "kopf.activities.probe", "kubernetes.client.rest", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = OperatorConfig.from_env()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    namespaces = [] if args.all_namespaces else [args.namespace or "default"]
    kopf.run(
        registry=registry,
        clusterwide=args.all_namespaces,
        namespaces=namespaces,
        standalone=not args.peering,
        liveness_endpoint=args.liveness or None,
        memo=kopf.Memo(config=config),
    )
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``codeground operator run`` on the top-level ``codeground`` parser."""
    p = subparsers.add_parser("operator", help="Run the Kubernetes operator (TrainingRun, Sandbox).")
    sub = p.add_subparsers(dest="operator_command", required=True)
    run = sub.add_parser("run", help="Watch TrainingRuns and Sandboxes and reconcile them until stopped.")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", help="Watch only this namespace (default: default).")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="Watch every namespace.")
    run.add_argument("--kubeconfig", help="Kubeconfig file (default: in-cluster, then $KUBECONFIG/~/.kube/config).")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                     help="Liveness endpoint URL kopf serves ('' to disable).")
    run.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0 to disable).")
    run.add_argument("--peering", action="store_true", help="Use kopf peering instead of standalone mode.")
    run.add_argument("--verbose", "-v", action="store_true", help="Debug logging.")
    run.set_defaults(func=_run)

"""The kopf handlers: watch TrainingRuns, Sandboxes and their children; enqueue; run the reconcilers.

Imported by :mod:`codeground.operator.cli`, which runs kopf with :data:`registry`. The handlers are
thin: each watch event only decides whether something a reconcile reads has changed (generation,
Job status, a stage's progress annotation, Deployment readiness) and, if so, adds the owning object's
key to the :class:`WorkQueue`. Workers run :func:`reconcile_run` / :func:`reconcile_sandbox` in threads.

No finalizers: children carry owner references, so the garbage collector deletes them with their
owner, and nothing outside the cluster needs cleanup. kopf's own state annotations are not used
(``on.event`` handlers keep none); all state lives in the objects and their status.

What it does not guarantee: ordering between objects; each object converges on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import kopf

from . import labels as L
from .config import OperatorConfig
from .kube import Kube
from .runs import reconcile_run
from .sandboxes import reconcile_sandbox
from .workqueue import Key, Outcome, WorkQueue

log = logging.getLogger(__name__)
registry = kopf.OperatorRegistry()
GROUP, VERSION = "codeground.dev", "v1alpha1"


class State:
    """Per-process state, kept in kopf's ``memo``: the API client, queue and change fingerprints."""

    def __init__(self, config: OperatorConfig, kube: Kube):
        self.config, self.kube = config, kube
        self.queue = WorkQueue(self.reconcile, workers=config.workers)
        self.seen: dict[str, Any] = {}  # uid -> fingerprint of what reconciles read
        self.rbac_done: set[str] = set()

    async def reconcile(self, key: Key) -> Outcome:
        kind, ns, name = key
        if kind == "TrainingRun":
            return await asyncio.to_thread(reconcile_run, self.kube, self.config, ns, name, self.rbac_done)
        return await asyncio.to_thread(reconcile_sandbox, self.kube, self.config, ns, name)

    def changed(self, body: dict[str, Any], fingerprint: Any) -> bool:
        uid = body["metadata"]["uid"]
        if self.seen.get(uid) == fingerprint:
            return False
        self.seen[uid] = fingerprint
        return True


def _state(memo: Any) -> State:
    return memo["codeground"]


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> Any:
    return kopf.login_via_client(**kwargs)


@kopf.on.startup(registry=registry)
async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    from kubernetes import client
    from kubernetes import config as kconfig

    cfg: OperatorConfig = memo.get("config") or OperatorConfig.from_env()
    settings.watching.server_timeout = cfg.watch_timeout
    settings.watching.client_timeout = cfg.watch_timeout + 60
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.WARNING
    settings.scanning.disabled = True  # no cluster-wide CRD watch: less RBAC, the CRDs are installed by the chart
    try:
        kconfig.load_incluster_config()
    except kconfig.ConfigException:
        kconfig.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    c = client.Configuration.get_default_copy()
    c.connection_pool_maxsize = max(8, cfg.workers * 2)
    state = State(cfg, Kube(client.ApiClient(c)))
    memo["codeground"] = state
    state.queue.start()

    async def resync() -> None:
        while True:
            await asyncio.sleep(cfg.resync_seconds)
            for key in list(state.queue.known):
                state.queue.add(key)

    memo["resync"] = asyncio.create_task(resync())


@kopf.on.cleanup(registry=registry)
async def cleanup(memo: Any, **_: Any) -> None:
    if "resync" in memo:
        memo["resync"].cancel()
    if "codeground" in memo:
        await _state(memo).queue.stop()


@kopf.on.event(GROUP, VERSION, "trainingruns", registry=registry)
def on_run(type: str, body: Any, namespace: Any, name: str, memo: Any, **_: Any) -> None:
    state = _state(memo)
    key: Key = ("TrainingRun", namespace, name)
    if type == "DELETED":
        state.queue.forget(key)
        state.seen.pop(body["metadata"]["uid"], None)
        if sandbox := (body.get("spec", {}).get("sandbox") or {}).get("name"):
            state.queue.add(("Sandbox", namespace, sandbox))  # its pool may shrink
        return
    # Our own status patches do not change the generation: no reconcile loop on them.
    meta = body["metadata"]
    if state.changed(body, (meta.get("generation"), meta.get("deletionTimestamp"))):
        state.queue.add(key)


@kopf.on.event(GROUP, VERSION, "sandboxes", registry=registry)
def on_sandbox(type: str, body: Any, namespace: Any, name: str, memo: Any, **_: Any) -> None:
    state = _state(memo)
    key: Key = ("Sandbox", namespace, name)
    if type == "DELETED":
        state.queue.forget(key)
        state.seen.pop(body["metadata"]["uid"], None)
        return
    if state.changed(body, body["metadata"].get("generation")):
        state.queue.add(key)


@kopf.on.event("batch", "v1", "jobs", labels={L.RUN_LABEL: kopf.PRESENT}, registry=registry)
def on_job(type: str, body: Any, namespace: Any, labels: Any, memo: Any, **_: Any) -> None:
    state = _state(memo)
    status = body.get("status") or {}
    conds = tuple(sorted((c.get("type"), c.get("status")) for c in status.get("conditions") or []))
    fingerprint = (type == "DELETED", body["spec"].get("suspend"), conds, status.get("active"))
    if type == "DELETED":
        state.seen.pop(body["metadata"]["uid"], None)
        state.queue.add(("TrainingRun", namespace, labels[L.RUN_LABEL]))
    elif state.changed(body, fingerprint):
        state.queue.add(("TrainingRun", namespace, labels[L.RUN_LABEL]))


@kopf.on.event("", "v1", "pods", labels={L.RUN_LABEL: kopf.PRESENT}, registry=registry)
def on_stage_pod(type: str, body: Any, namespace: Any, labels: Any, annotations: Any, memo: Any, **_: Any) -> None:
    """Only a stage's progress annotation matters here; Job events cover pod completion."""
    state = _state(memo)
    if type == "DELETED":
        state.seen.pop(body["metadata"]["uid"], None)
        return
    raw = annotations.get(L.PROGRESS_ANNOTATION)
    if raw and state.changed(body, raw):
        state.queue.add(("TrainingRun", namespace, labels[L.RUN_LABEL]))


@kopf.on.event("apps", "v1", "deployments", labels={L.SANDBOX_LABEL: kopf.PRESENT}, registry=registry)
def on_pool(type: str, body: Any, namespace: Any, labels: Any, memo: Any, **_: Any) -> None:
    state = _state(memo)
    status = body.get("status") or {}
    fingerprint = json.dumps([type, body.get("spec", {}).get("replicas"), status.get("replicas"),
                              status.get("readyReplicas"), status.get("conditions")], sort_keys=True)
    if type == "DELETED":
        state.seen.pop(body["metadata"]["uid"], None)
        state.queue.add(("Sandbox", namespace, labels[L.SANDBOX_LABEL]))
    elif state.changed(body, fingerprint):
        state.queue.add(("Sandbox", namespace, labels[L.SANDBOX_LABEL]))

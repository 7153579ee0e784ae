"""The operator's only door to the API server: a few blocking calls over the official client.

Called from :mod:`codeground.operator.runs` and :mod:`codeground.operator.sandboxes` (in worker
threads). Reads return plain camelCase dicts (raw JSON, no model objects, so they are cheap and look
like what the builders produce). ``create`` is create-if-absent: 409 Conflict means the object is
already there, which is how a restarted operator adopts what the previous one created. Every call
counts into the Prometheus ``codeground_operator_api_calls_total`` metric.

What it does not do: retry. A failed call raises :class:`kubernetes.client.ApiException` and the
work queue retries the whole reconcile with a backoff.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from datetime import datetime, timezone
from typing import Any

from kubernetes import client

from codeground.pipeline.spec import GROUP, VERSION

from . import labels as L
from .metrics import API_CALLS

_REQUEST_TIMEOUT = (5, 30)  # connect, read seconds: a stuck call never blocks a worker forever


def _json(resp: Any) -> dict[str, Any]:
    return json.loads(resp.data)


class Kube:
    """Typed-by-convention access to the objects the operator reads and writes."""

    def __init__(self, api: client.ApiClient):
        self.api = api
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.net = client.NetworkingV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    # --- generic -------------------------------------------------------------------------
    def _call(self, verb: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", _REQUEST_TIMEOUT)
        try:
            out = fn(*args, **kwargs)
        except client.ApiException as exc:
            API_CALLS.labels(verb=verb, code=str(exc.status)).inc()
            raise
        API_CALLS.labels(verb=verb, code="ok").inc()
        return out

    def _creator(self, kind: str) -> Any:
        return {
            "Job": self.batch.create_namespaced_job,
            "ConfigMap": self.core.create_namespaced_config_map,
            "Service": self.core.create_namespaced_service,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
            "Deployment": self.apps.create_namespaced_deployment,
            "NetworkPolicy": self.net.create_namespaced_network_policy,
        }[kind]

    def create(self, manifest: dict[str, Any]) -> bool:
        """Create ``manifest`` unless it exists; True when this call created it."""
        ns = manifest["metadata"]["namespace"]
        try:
            self._call("create", self._creator(manifest["kind"]), ns, manifest, _preload_content=False)
        except client.ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    # --- custom resources ----------------------------------------------------------------
    def get_custom(self, plural: str, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(self._call("get", self.custom.get_namespaced_custom_object, GROUP, VERSION, ns, plural, name,
                                    _preload_content=False))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_custom(self, plural: str, ns: str) -> list[dict[str, Any]]:
        out = self._call("list", self.custom.list_namespaced_custom_object, GROUP, VERSION, ns, plural,
                         _preload_content=False)
        return _json(out).get("items", [])

    def patch_status(self, plural: str, ns: str, name: str, status: dict[str, Any],
                     old: dict[str, Any] | None = None) -> None:
        """Replace the status: a merge patch of the whole ``status`` (lists are replaced, not merged)
        with explicit nulls for the top-level fields of ``old`` that ``status`` no longer has."""
        status = {k: None for k in old or {} if k not in status} | status
        try:
            self._call("patch_status", self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, ns, plural,
                       name, {"status": status}, _preload_content=False)
        except client.ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise

    # --- children ------------------------------------------------------------------------
    def list_jobs(self, ns: str, selector: str) -> list[dict[str, Any]]:
        return _json(self._call("list", self.batch.list_namespaced_job, ns, label_selector=selector,
                                _preload_content=False)).get("items", [])

    def list_pods(self, ns: str, selector: str) -> list[dict[str, Any]]:
        return _json(self._call("list", self.core.list_namespaced_pod, ns, label_selector=selector,
                                _preload_content=False)).get("items", [])

    def set_job_suspend(self, ns: str, name: str, suspend: bool) -> None:
        self._call("patch", self.batch.patch_namespaced_job, name, ns, {"spec": {"suspend": suspend}},
                   _preload_content=False)

    def delete_jobs(self, ns: str, selector: str) -> None:
        """Delete Jobs (and, in the background, their pods) matching ``selector``."""
        self._call("delete", self.batch.delete_collection_namespaced_job, ns, label_selector=selector,
                   propagation_policy="Background", _preload_content=False)

    def get_configmap(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(self._call("get", self.core.read_namespaced_config_map, name, ns, _preload_content=False))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def replace_configmap(self, manifest: dict[str, Any]) -> None:
        m = manifest["metadata"]
        self._call("replace", self.core.replace_namespaced_config_map, m["name"], m["namespace"], manifest,
                   _preload_content=False)

    def get_deployment(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(self._call("get", self.apps.read_namespaced_deployment, name, ns, _preload_content=False))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_deployment(self, ns: str, name: str, patch: dict[str, Any]) -> None:
        self._call("patch", self.apps.patch_namespaced_deployment, name, ns, patch, _preload_content=False)

    # --- events --------------------------------------------------------------------------
    def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on ``body`` (shown by ``kubectl describe``); failures are not fatal."""
        meta = body["metadata"]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": meta["namespace"],
                         "labels": {L.MANAGED_BY_LABEL: L.MANAGER}},
            "involvedObject": {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": L.MANAGER}, "reportingComponent": L.MANAGER,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        # An Event is best-effort by design; the status carries the same facts.
        with contextlib.suppress(client.ApiException):
            self._call("create", self.core.create_namespaced_event, meta["namespace"], event, _preload_content=False)

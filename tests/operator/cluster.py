"""Helpers for the operator's tests on the real control plane: run the operator, drive stage pods.

Test harness only. :class:`OperatorProcess` runs ``codeground operator run`` as a child process (so a
test can kill and restart it); :class:`Cluster` wraps the test bed's ``KubeCluster`` with the reads
and waits the tests need.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client

from codeground.operator.testbed_assets import MESSAGE_ANNOTATION, OUTCOME_ANNOTATION

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_for(fn: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def crd_documents() -> list[dict[str, Any]]:
    """The generated CRDs from crds/, as the user applies them."""
    return [yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))]


class OperatorProcess:
    """``codeground operator run --all-namespaces`` against the test cluster, as a child process."""

    def __init__(self, kubeconfig: Path, log_path: Path, env: dict[str, str] | None = None):
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.env = {**os.environ, "CODEGROUND_RETRY_BASE_SECONDS": "1", "CODEGROUND_RESYNC_SECONDS": "30",
                    **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, namespace: str | None = None) -> OperatorProcess:
        """Start it watching every namespace, or only ``namespace``."""
        log = self.log_path.open("ab")
        scope = [f"--namespace={namespace}"] if namespace else ["--all-namespaces"]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from codeground.pipeline.cli import main; main()", "operator", "run",
             *scope, f"--kubeconfig={self.kubeconfig}", "--metrics-port=0", "--liveness="],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=str(REPO / "tests"),
        )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, like a node dying under the operator."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Cluster:
    """Reads and waits on one test namespace."""

    def __init__(self, kube_cluster: Any, namespace: str):
        self.kc, self.ns = kube_cluster, namespace
        api = kube_cluster.api_client()
        self.core, self.batch = client.CoreV1Api(api), client.BatchV1Api(api)
        self.apps, self.custom = client.AppsV1Api(api), client.CustomObjectsApi(api)

    def apply(self, doc: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kc.kubectl("apply", "-n", self.ns, "-f", "-", input=json.dumps(doc), check=check)

    def run(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object("codeground.dev", "v1alpha1", self.ns, "trainingruns", name)

    def status(self, name: str) -> dict[str, Any]:
        return self.run(name).get("status") or {}

    def jobs(self, run: str) -> dict[str, Any]:
        items = self.batch.list_namespaced_job(self.ns, label_selector=f"codeground.dev/run={run}").items
        return {j.metadata.name: j for j in items}

    def wait_job(self, name: str, timeout: float = 30.0) -> Any:
        return wait_for(lambda: self.batch.read_namespaced_job(name, self.ns), timeout, what=f"Job {name}")

    def running_pods(self, job: str, count: int = 1) -> list[Any]:
        def pods() -> list[Any]:
            items = self.core.list_namespaced_pod(self.ns, label_selector=f"job-name={job}").items
            running = [p for p in items if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
            return running if len(running) >= count else []
        return wait_for(pods, 30, what=f"{count} running pod(s) of Job {job}")

    def finish(self, job: str, phase: str = "Succeeded", message: dict[str, Any] | None = None,
               exit_code: int | None = None, count: int = 1) -> None:
        """End the Job's running pods as a kubelet would, with a termination message."""
        code = exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1)
        for pod in self.running_pods(job, count):
            ann = {OUTCOME_ANNOTATION: phase, "testbed.codeground.dev/exit-code": str(code)}
            if message is not None:
                ann[MESSAGE_ANNOTATION] = json.dumps(message)
            self.core.patch_namespaced_pod(pod.metadata.name, self.ns, {"metadata": {"annotations": ann}})

    def events(self, name: str) -> list[str]:
        items = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return [e.reason for e in sorted(items, key=lambda e: (e.last_timestamp or e.event_time or 0, e.metadata.name))]

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

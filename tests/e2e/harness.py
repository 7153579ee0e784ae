"""Test harness of the end-to-end test: what a real cluster's nodes would do, done on this machine.

Test harness only. The test bed has a real API server, scheduler and controllers, but kwok nodes run
no containers. This module stands in for the node side, faithfully to the pod specs the API holds:

- `OperatorProcess`: runs the chart's operator container (its command, args and env as rendered in
  the installed Deployment) as a local process, authenticated as the chart's ServiceAccount with a
  token from the TokenRequest API, so the chart's RBAC is what the operator really gets.
- `SandboxProcess`: runs a Sandbox pod's container command (and env) locally on a free loopback
  port instead of the pod's port 8080, with `--isolation gvisor` (a runsc sandbox per session)
  standing in for the pod's gVisor RuntimeClass (`--isolation pod`).
- `E2EKubelet`: the test bed's HarnessKubelet plus two things a node provides: the termination
  message (the stage writes it to `$CODEGROUND_TERMINATION_LOG`, which the kubelet returns as the
  container's `terminated.message`, on success too) and Service DNS (the Sandbox Service name a stage
  pod gets is rewritten to the local sandbox's address).

What it does not guarantee: image contents, isolation between pods, network policies or resource
limits; those are covered by the image tests and the builders' unit tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from codeground.operator.testbed import free_port
from tests.bed.kubelet import HarnessKubelet, PodRun

VENV_BIN = Path(sys.executable).parent


def _codeground_argv(command: list[str]) -> list[str]:
    """The container command with `codeground` resolved to this environment's console script."""
    exe = VENV_BIN / "codeground"
    return [str(exe) if command[0] == "codeground" else command[0], *command[1:]]


def serviceaccount_kubeconfig(kube_cluster: Any, namespace: str, serviceaccount: str, dest: Path) -> Path:
    """A kubeconfig that authenticates as `namespace/serviceaccount` (a bound token, 2 h)."""
    token = kube_cluster.kubectl("create", "token", serviceaccount, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(Path(kube_cluster.kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    dest.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "bed", "cluster": cluster}],
        "users": [{"name": serviceaccount, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "bed", "user": serviceaccount, "namespace": namespace}}],
    }))
    return dest


class _Process:
    """A subprocess with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name, self.argv, self.log_path = name, argv, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status < 500:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{self.name} did not answer {url} in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> _Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OperatorProcess(_Process):
    """The operator container of the installed chart's Deployment, as a local process."""

    def __init__(self, deployment: dict[str, Any], kubeconfig: Path, workdir: Path, extra_env: dict[str, str]):
        c = deployment["spec"]["template"]["spec"]["containers"][0]
        self.health, self.metrics = free_port(), free_port()
        args = []
        for a in c.get("args", []):
            if a.startswith("--liveness="):  # the pod's 0.0.0.0:8080 would collide on one machine
                a = f"--liveness=http://127.0.0.1:{self.health}/healthz"
            elif a.startswith("--metrics-port="):
                a = f"--metrics-port={self.metrics}"
            args.append(a)
        env = {**os.environ, **{e["name"]: e["value"] for e in c.get("env", []) if "value" in e}, **extra_env}
        argv = [*_codeground_argv(c["command"]), *args, f"--kubeconfig={kubeconfig}"]
        super().__init__("operator", argv, env, workdir / "operator.log")
        self.wait_http(f"http://127.0.0.1:{self.health}/healthz", timeout=90)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as r:
            return r.read().decode()


class SandboxProcess(_Process):
    """A Sandbox pod's container, as a local process on a free loopback port."""

    def __init__(self, core: client.CoreV1Api, pod: dict[str, Any], workdir: Path):
        c = pod["spec"]["containers"][0]
        self.port = free_port()
        argv = _codeground_argv([*c["command"], *c.get("args", [])])
        for flag, value in (("--host", "127.0.0.1"), ("--port", str(self.port))):
            argv[argv.index(flag) + 1] = value
        # `--isolation pod` trusts the pod's RuntimeClass (gVisor) as the boundary. Here there is no pod,
        # so the harness stands in for it with a runsc sandbox per session: untrusted code never runs
        # unisolated on the test machine.
        if "--isolation" in argv:
            argv[argv.index("--isolation") + 1] = "gvisor"
        kubelet = HarnessKubelet.__new__(HarnessKubelet)  # only for its env resolution (valueFrom, envFrom)
        kubelet.core, kubelet.namespace = core, pod["metadata"]["namespace"]
        env = {**os.environ, **kubelet._env(pod, c)}
        env.setdefault("CODEGROUND_WORKDIR", str(workdir / "scratch"))
        super().__init__("sandbox", argv, env, workdir / "sandbox.log")
        self.url = f"http://127.0.0.1:{self.port}"
        self.wait_http(f"{self.url}/readyz", timeout=90)


class E2EKubelet(HarnessKubelet):
    """HarnessKubelet with the termination message and the Sandbox Service mapped to a local URL."""

    def __init__(self, *args: Any, service_urls: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.service_urls = service_urls or {}

    def _pod_root(self, pod: dict[str, Any]) -> Path:
        meta = pod["metadata"]
        return self.workdir / self.namespace / f"{meta['name']}-{meta['uid'][:8]}"

    def _env(self, pod: dict[str, Any], c: dict[str, Any]) -> dict[str, str]:
        env = super()._env(pod, c)
        for key, value in env.items():
            for remote, local in self.service_urls.items():
                if remote in value:
                    env[key] = value.replace(remote, local)
        # The image's `codeground` is this environment's console script (pytest may run without the
        # venv on PATH).
        env.setdefault("PATH", f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        root = self._pod_root(pod)
        root.mkdir(parents=True, exist_ok=True)
        env["CODEGROUND_TERMINATION_LOG"] = str(root / f"{c['name']}.termination-log")
        return env

    def run_pod(self, pod: dict[str, Any]) -> PodRun:
        run = super().run_pod(pod)
        # Like the kubelet: the container's termination message file becomes terminated.message.
        path = self._pod_root(pod) / f"{pod['spec']['containers'][0]['name']}.termination-log"
        if path.exists() and path.read_text().strip():
            run.message = path.read_text()[:4096]
        return run


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:6000]

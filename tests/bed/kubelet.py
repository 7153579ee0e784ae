"""A stand-in kubelet for tests: run a kwok pod's container command locally, report its phase.

Test harness only; users never need it. kwok marks pods Running but runs no container. For pods in
one namespace (optionally filtered by a label selector), `HarnessKubelet` runs each Running pod's
container commands as local processes, with the pod's env (value, configMapKeyRef, secretKeyRef,
fieldRef, envFrom) and its volumes (configMap, secret, emptyDir, hostPath, persistentVolumeClaim)
materialised under a local directory. Then it annotates the pod with the outcome and kwok's
`codeground-pod-succeeded|failed` Stages (operator/testbed_assets.py) write the terminal status, as a
kubelet would.

What it does not guarantee: no image, no isolation, no resource limits. The command runs on this
machine with this Python (`python`/`python3` map to `sys.executable`) and, by default, this
process's environment under the pod's env. Mount paths are not bind-mounted: each mountPath that
appears in the command, args, env values or workingDir is rewritten to its local directory, so a
program that hard-codes a mount path elsewhere will not find it. PVCs are plain directories shared by
every pod in the harness, keyed by claim name. Init containers, probes and restarts are not run;
restartPolicy OnFailure ends as Failed.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from codeground.operator.testbed_assets import EXIT_CODE_ANNOTATION, MESSAGE_ANNOTATION, OUTCOME_ANNOTATION

log = logging.getLogger(__name__)


@dataclass
class PodRun:
    """What the harness did with one pod: exit code of the first failing container (or 0) and logs."""

    name: str
    exit_code: int
    logs: dict[str, Path]
    message: str = ""

    def output(self, container: str | None = None) -> str:
        path = self.logs[container] if container else next(iter(self.logs.values()))
        return path.read_text(errors="replace")


class HarnessKubelet:
    """Runs the pods of `namespace` that kwok has made Running; a context manager around a poll thread."""

    def __init__(
        self, api: client.ApiClient, namespace: str, workdir: Path, *, label_selector: str = "",
        inherit_env: bool = True, timeout: float = 600.0, poll: float = 0.3, max_parallel: int = 8,
    ):
        self.core = client.CoreV1Api(api)
        self.namespace, self.workdir, self.label_selector = namespace, Path(workdir), label_selector
        self.inherit_env, self.timeout, self.poll = inherit_env, timeout, poll
        self.runs: dict[str, PodRun] = {}
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_parallel, thread_name_prefix="harness-kubelet")
        self._thread = threading.Thread(target=self._loop, name="harness-kubelet", daemon=True)

    def __enter__(self) -> HarnessKubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.label_selector).items
            except Exception as e:  # the API may be restarting; keep polling
                log.warning("harness kubelet: listing pods failed: %s", e)
                pods = []
            for pod in pods:
                ann = pod.metadata.annotations or {}
                if (pod.status.phase == "Running" and pod.metadata.deletion_timestamp is None
                        and OUTCOME_ANNOTATION not in ann and pod.metadata.uid not in self._seen):
                    self._seen.add(pod.metadata.uid)
                    self._pool.submit(self._run_and_report, pod)
            self._stop.wait(self.poll)

    def _run_and_report(self, pod: client.V1Pod) -> None:
        try:
            run = self.run_pod(pod)
        except Exception as e:  # a harness bug must still end the pod, or the test waits forever
            log.exception("harness kubelet: running pod %s failed", pod.metadata.name)
            run = PodRun(pod.metadata.name, 128, {}, f"harness kubelet error: {e}")
        self.runs[pod.metadata.name] = run
        outcome = "Succeeded" if run.exit_code == 0 else "Failed"
        body = {"metadata": {"annotations": {
            OUTCOME_ANNOTATION: outcome, EXIT_CODE_ANNOTATION: str(run.exit_code), MESSAGE_ANNOTATION: run.message,
        }}}
        with contextlib.suppress(client.ApiException):  # pod deleted meanwhile
            self.core.patch_namespaced_pod(pod.metadata.name, self.namespace, body)

    # --- running one pod -------------------------------------------------------------------

    def run_pod(self, pod: client.V1Pod) -> PodRun:
        """Run every container of `pod` concurrently; the pod fails if any container exits non-zero."""
        root = self.workdir / self.namespace / f"{pod.metadata.name}-{pod.metadata.uid[:8]}"
        volumes = self._volumes(pod, root / "volumes")
        if missing := [c.name for c in pod.spec.containers if not c.command]:
            return PodRun(pod.metadata.name, 126, {}, f"containers {missing}: the harness kubelet needs an explicit command")
        procs, logs = [], {}
        for c in pod.spec.containers:
            mounts = sorted(
                ((m.mount_path.rstrip("/") or "/", volumes[m.name] / (m.sub_path or "")) for m in c.volume_mounts or []),
                key=lambda pair: -len(pair[0]),
            )
            env = self._env(pod, c)
            env = {k: _map_paths(v, mounts) for k, v in env.items()}
            argv = [_expand(a, env) for a in [*(c.command or []), *(c.args or [])]]
            argv = [_map_paths(a, mounts) for a in argv]
            if argv[0] in ("python", "python3"):
                argv[0] = sys.executable
            cwd = Path(_map_paths(c.working_dir, mounts)) if c.working_dir else root / "cwd" / c.name
            cwd.mkdir(parents=True, exist_ok=True)
            logs[c.name] = root / f"{c.name}.log"
            base = dict(os.environ) if self.inherit_env else {"PATH": os.environ.get("PATH", "")}
            base["HOSTNAME"] = pod.metadata.name
            with logs[c.name].open("wb") as out:
                procs.append(subprocess.Popen(argv, cwd=cwd, env={**base, **env}, stdout=out,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + float(pod.spec.active_deadline_seconds or self.timeout)
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                codes.append(137)
        code = next((c for c in codes if c != 0), 0)
        message = ""
        if code:
            failed = pod.spec.containers[codes.index(code)].name
            message = "\n".join(logs[failed].read_text(errors="replace").splitlines()[-20:])[-2000:]
        return PodRun(pod.metadata.name, code, logs, message)

    def _volumes(self, pod: client.V1Pod, root: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for v in pod.spec.volumes or []:
            d = root / v.name
            if v.config_map is not None:
                cm = self.core.read_namespaced_config_map(v.config_map.name, self.namespace)
                _write_items(d, {**(cm.data or {})}, v.config_map.items)
            elif v.secret is not None:
                s = self.core.read_namespaced_secret(v.secret.secret_name, self.namespace)
                _write_items(d, {k: base64.b64decode(x) for k, x in (s.data or {}).items()}, v.secret.items)
            elif v.host_path is not None:
                d = Path(v.host_path.path)
            elif v.persistent_volume_claim is not None:
                d = self.workdir / "pvc" / self.namespace / v.persistent_volume_claim.claim_name
            # emptyDir and anything else: an empty directory
            d.mkdir(parents=True, exist_ok=True)
            out[v.name] = d
        return out

    def _env(self, pod: client.V1Pod, c: client.V1Container) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in c.env_from or []:
            if src.config_map_ref is not None:
                data = self.core.read_namespaced_config_map(src.config_map_ref.name, self.namespace).data or {}
            else:
                raw = self.core.read_namespaced_secret(src.secret_ref.name, self.namespace).data or {}
                data = {k: base64.b64decode(x).decode() for k, x in raw.items()}
            env |= {f"{src.prefix or ''}{k}": v for k, v in data.items()}
        for e in c.env or []:
            if e.value_from is None:
                env[e.name] = _expand(e.value or "", env)
            elif (ref := e.value_from.config_map_key_ref) is not None:
                env[e.name] = (self.core.read_namespaced_config_map(ref.name, self.namespace).data or {})[ref.key]
            elif (ref := e.value_from.secret_key_ref) is not None:
                raw = (self.core.read_namespaced_secret(ref.name, self.namespace).data or {})[ref.key]
                env[e.name] = base64.b64decode(raw).decode()
            elif (ref := e.value_from.field_ref) is not None:
                env[e.name] = _field(pod, ref.field_path)
        return env


def _write_items(d: Path, data: dict[str, Any], items: list[Any] | None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for key, path in ([(i.key, i.path) for i in items] if items else [(k, k) for k in data]):
        f = d / path
        f.parent.mkdir(parents=True, exist_ok=True)
        value = data[key]
        f.write_bytes(value if isinstance(value, bytes) else str(value).encode())


def _field(pod: client.V1Pod, path: str) -> str:
    simple = {
        "metadata.name": pod.metadata.name, "metadata.namespace": pod.metadata.namespace,
        "metadata.uid": pod.metadata.uid, "spec.nodeName": pod.spec.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name, "status.podIP": pod.status.pod_ip,
        "status.hostIP": pod.status.host_ip,
    }
    if path in simple:
        return str(simple[path] or "")
    if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
        return str((getattr(pod.metadata, m.group(1)) or {}).get(m.group(2), ""))
    return ""


def _expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, $$ escapes, unknown ones stay."""
    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", repl, s)


def _map_paths(s: str, mounts: list[tuple[str, Path]]) -> str:
    """Rewrite each mountPath that appears as a whole path in `s` to its local directory (one pass,
    longest mountPath first, so a local directory is never rewritten again)."""
    if not mounts:
        return s
    local = dict(mounts)
    alternatives = "|".join(re.escape(m) for m, _ in mounts)
    return re.sub(rf"(?<![\w.-])({alternatives})(?=/|$|[^\w.-])", lambda m: str(local[m.group(1)]), s)

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
import json
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

    def _read(self, kind: str, name: str) -> dict[str, Any]:
        """The ConfigMap or Secret `name` as a plain dict (Secret values base64-decoded to bytes)."""
        if kind == "configmap":
            resp: Any = self.core.read_namespaced_config_map(name, self.namespace, _preload_content=False)
            obj = json.loads(resp.data)
            return {**obj.get("data", {}), **{k: base64.b64decode(v) for k, v in obj.get("binaryData", {}).items()}}
        raw: Any = self.core.read_namespaced_secret(name, self.namespace, _preload_content=False)
        return {k: base64.b64decode(v) for k, v in json.loads(raw.data).get("data", {}).items()}

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                resp: Any = self.core.list_namespaced_pod(
                    self.namespace, label_selector=self.label_selector, _preload_content=False
                )
                pods = json.loads(resp.data)["items"]
            except Exception as e:  # the API may be restarting; keep polling
                log.warning("harness kubelet: listing pods failed: %s", e)
                pods = []
            for pod in pods:
                meta = pod["metadata"]
                if (pod.get("status", {}).get("phase") == "Running" and "deletionTimestamp" not in meta
                        and OUTCOME_ANNOTATION not in meta.get("annotations", {}) and meta["uid"] not in self._seen):
                    self._seen.add(meta["uid"])
                    self._pool.submit(self._run_and_report, pod)
            self._stop.wait(self.poll)

    def _run_and_report(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        try:
            run = self.run_pod(pod)
        except Exception as e:  # a harness bug must still end the pod, or the test waits forever
            log.exception("harness kubelet: running pod %s failed", name)
            run = PodRun(name, 128, {}, f"harness kubelet error: {e}")
        self.runs[name] = run
        outcome = "Succeeded" if run.exit_code == 0 else "Failed"
        body = {"metadata": {"annotations": {
            OUTCOME_ANNOTATION: outcome, EXIT_CODE_ANNOTATION: str(run.exit_code), MESSAGE_ANNOTATION: run.message,
        }}}
        with contextlib.suppress(client.ApiException):  # pod deleted meanwhile
            self.core.patch_namespaced_pod(name, self.namespace, body)

    # --- running one pod -------------------------------------------------------------------

    def run_pod(self, pod: dict[str, Any]) -> PodRun:
        """Run every container of `pod` (a Pod as a dict) concurrently; it fails if any exits non-zero."""
        meta, spec = pod["metadata"], pod["spec"]
        containers = spec["containers"]
        if missing := [c["name"] for c in containers if not c.get("command")]:
            return PodRun(meta["name"], 126, {}, f"containers {missing}: the harness kubelet needs an explicit command")
        root = self.workdir / self.namespace / f"{meta['name']}-{meta['uid'][:8]}"
        volumes = self._volumes(spec.get("volumes", []), root / "volumes")
        procs, logs = [], {}
        for c in containers:
            mounts = sorted(
                ((m["mountPath"].rstrip("/") or "/", volumes[m["name"]] / m.get("subPath", ""))
                 for m in c.get("volumeMounts", []) if m["name"] in volumes),
                key=lambda pair: -len(pair[0]),
            )
            env = {k: _map_paths(v, mounts) for k, v in self._env(pod, c).items()}
            argv = [_map_paths(_expand(a, env), mounts) for a in [*c["command"], *c.get("args", [])]]
            if argv[0] in ("python", "python3"):
                argv[0] = sys.executable
            cwd = Path(_map_paths(c["workingDir"], mounts)) if c.get("workingDir") else root / "cwd" / c["name"]
            cwd.mkdir(parents=True, exist_ok=True)
            logs[c["name"]] = root / f"{c['name']}.log"
            base = dict(os.environ) if self.inherit_env else {"PATH": os.environ.get("PATH", "")}
            base["HOSTNAME"] = meta["name"]
            with logs[c["name"]].open("wb") as out:
                procs.append(subprocess.Popen(argv, cwd=cwd, env={**base, **env}, stdout=out,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + float(spec.get("activeDeadlineSeconds") or self.timeout)
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
            failed = containers[codes.index(code)]["name"]
            message = "\n".join(logs[failed].read_text(errors="replace").splitlines()[-20:])[-2000:]
        return PodRun(meta["name"], code, logs, message)

    def _volumes(self, volumes: list[dict[str, Any]], root: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for v in volumes:
            d = root / v["name"]
            if "configMap" in v or "secret" in v:
                kind, src = ("configmap", v["configMap"]) if "configMap" in v else ("secret", v["secret"])
                try:
                    data = self._read(kind, src.get("name") or src["secretName"])
                except client.ApiException as e:
                    if e.status != 404 or not src.get("optional"):
                        raise
                    data = {}
                _write_items(d, data, src.get("items"))
            elif "hostPath" in v:
                d = Path(v["hostPath"]["path"])
            elif "persistentVolumeClaim" in v:
                d = self.workdir / "pvc" / self.namespace / v["persistentVolumeClaim"]["claimName"]
            # emptyDir, projected (the service-account token) and the rest: an empty directory
            d.mkdir(parents=True, exist_ok=True)
            out[v["name"]] = d
        return out

    def _env(self, pod: dict[str, Any], c: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in c.get("envFrom", []):
            kind, ref = ("configmap", src["configMapRef"]) if "configMapRef" in src else ("secret", src["secretRef"])
            env |= {f"{src.get('prefix', '')}{k}": _text(v) for k, v in self._read(kind, ref["name"]).items()}
        for e in c.get("env", []):
            vf = e.get("valueFrom")
            if vf is None:
                env[e["name"]] = _expand(e.get("value", ""), env)
            elif "configMapKeyRef" in vf:
                env[e["name"]] = _text(self._read("configmap", vf["configMapKeyRef"]["name"])[vf["configMapKeyRef"]["key"]])
            elif "secretKeyRef" in vf:
                env[e["name"]] = _text(self._read("secret", vf["secretKeyRef"]["name"])[vf["secretKeyRef"]["key"]])
            elif "fieldRef" in vf:
                env[e["name"]] = _field(pod, vf["fieldRef"]["fieldPath"])
        return env


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _write_items(d: Path, data: dict[str, Any], items: list[dict[str, str]] | None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for key, path in ([(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]):
        f = d / path
        f.parent.mkdir(parents=True, exist_ok=True)
        value = data[key]
        f.write_bytes(value if isinstance(value, bytes) else str(value).encode())


def _field(pod: dict[str, Any], path: str) -> str:
    """The downward-API value of `path` (metadata.name, spec.nodeName, metadata.labels['k'], ...)."""
    if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
        return str(pod["metadata"].get(m.group(1), {}).get(m.group(2), ""))
    node: Any = pod
    for part in path.split("."):
        node = node.get(part, "") if isinstance(node, dict) else ""
    return str(node)


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

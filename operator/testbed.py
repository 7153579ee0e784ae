"""A real Kubernetes control plane and MinIO on loopback, for tests and for trying the operator locally.

Who calls it: the pytest fixtures in `tests/bed/fixtures.py`, and the `codeground dev cluster|minio`
commands (`add_cli`). It starts the real binaries built by `hack/build-binaries.sh` (etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, kwok, minio) as child processes on free
127.0.0.1 ports, waits until each is ready, writes a kubeconfig and registers kwok nodes with
`nvidia.com/gpu`. Plain subprocess management: no kopf and no Kubernetes client here.

What it does not guarantee: no kubelet, CNI or kube-proxy run, so no container ever runs and Service
IPs carry no traffic (kwok fakes node and pod status; tests/bed/kubelet.py runs commands for tests).
The PKI is a throwaway single key; never point anything real at this cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from codeground.operator import testbed_assets as assets
from codeground.pipeline.errors import InfrastructureError

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-binaries.sh"
COMPONENT_FILES = {
    "etcd": ("etcd",),
    "kube": ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
    "kwok": ("kwok", "kwok-stages"),
    "helm": ("helm",),
    "minio": ("minio",),
}
DEV_HOME = Path(os.environ.get("CODEGROUND_DEV_HOME", Path.home() / ".cache" / "codeground"))


class TestbedError(InfrastructureError):
    """The test bed could not be built or started; the message names the component and its log."""

    __test__ = False  # not a pytest test class despite the name


def find_binaries(components: Sequence[str] = tuple(COMPONENT_FILES)) -> Path:
    """Return the directory holding the binaries of `components`, building them if needed.

    `CODEGROUND_BIN_DIR` points at prebuilt binaries; otherwise `hack/build-binaries.sh` builds
    (cold: tens of minutes) or finds them in its cache. Its progress goes to this process's stderr.
    """
    wanted = [f for c in components for f in COMPONENT_FILES[c]]
    if env := os.environ.get("CODEGROUND_BIN_DIR"):
        bin_dir = Path(env)
        if missing := [f for f in wanted if not (bin_dir / f).exists()]:
            raise TestbedError(f"CODEGROUND_BIN_DIR={bin_dir} lacks {missing}; unset it to build them")
        return bin_dir
    if not BUILD_SCRIPT.exists():
        raise TestbedError(f"{BUILD_SCRIPT} not found (installed package?): set CODEGROUND_BIN_DIR")
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *components], stdout=subprocess.PIPE, text=True, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        raise TestbedError(f"{BUILD_SCRIPT} {' '.join(components)} failed (exit {proc.returncode}); see its stderr")
    bin_dir = Path(lines[-1])
    if missing := [f for f in wanted if not (bin_dir / f).exists()]:
        raise TestbedError(f"{BUILD_SCRIPT} finished but {bin_dir} lacks {missing}")
    return bin_dir


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (another process may still take it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _alive(pid: int, exe: str | None = None) -> bool:
    """True when `pid` runs (and, if given, runs `exe`: guards against a recycled pid)."""
    try:
        os.kill(pid, 0)
        if exe is not None:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            return cmd == exe
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_pids(procs: dict[str, dict[str, Any]], timeout: float = 10.0) -> None:
    """Stop processes (a dict name -> {pid, exe}) one by one in reverse start order: SIGTERM, then
    SIGKILL after `timeout`. Sequential on purpose: kube-apiserver hangs in shutdown when etcd goes first."""
    for info in reversed(list(procs.values())):
        pid, exe = info["pid"], info.get("exe")
        if _alive(pid, exe):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid, exe) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if _alive(pid, exe):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


class _Supervisor:
    """Starts processes with logs under `workdir/logs`, remembers them, and stops them all."""

    def __init__(self, workdir: Path, die_with_parent: bool):
        self.workdir = workdir
        self.die_with_parent = die_with_parent
        self.procs: dict[str, dict[str, Any]] = {}
        self._popens: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            p = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})}, cwd=self.workdir, start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self._popens[name] = p
        self.procs[name] = {"pid": p.pid, "exe": argv[0], "log": str(log)}

    def wait_until(self, name: str, check: Any, timeout: float) -> None:
        """Poll `check()` until true; fail early if the process died, with its log's tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (p := self._popens.get(name)) is not None and p.poll() is not None:
                raise TestbedError(f"{name} exited with {p.returncode}:\n{self.log_tail(name)}")
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.25)
        raise TestbedError(f"{name} not ready after {timeout:.0f}s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 25) -> str:
        log = Path(self.procs[name]["log"])
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def stop(self) -> None:
        stop_pids(self.procs)
        self.procs.clear()
        self._popens.clear()


def _https_ok(url: str, ctx: ssl.SSLContext) -> bool:
    with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
        return r.status == 200


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200


class ControlPlane:
    """etcd + kube-apiserver + controller-manager + scheduler + kwok GPU nodes, all on 127.0.0.1.

    `start()` returns once the API answers /readyz, every node is Ready and the `default`
    ServiceAccount exists; `stop()` ends every process. `kubeconfig` is the admin kubeconfig.
    """

    def __init__(
        self, bin_dir: Path, workdir: Path, *, gpu_nodes: int = 4, gpus_per_node: int = 8,
        cpu_nodes: int = 1, die_with_parent: bool = True,
    ):
        self.bin_dir, self.workdir = Path(bin_dir), Path(workdir)
        self.gpu_nodes, self.gpus_per_node, self.cpu_nodes = gpu_nodes, gpus_per_node, cpu_nodes
        self._sup = _Supervisor(self.workdir, die_with_parent)
        self.kubeconfig = self.workdir / "kubeconfig"
        self.server = ""

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def node_names(self) -> list[str]:
        return [f"kwok-gpu-{i}" for i in range(self.gpu_nodes)] + [f"kwok-cpu-{i}" for i in range(self.cpu_nodes)]

    def start(self, timeout: float = 180.0) -> ControlPlane:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        b, w, sup = self.bin_dir, self.workdir, self._sup
        w.mkdir(parents=True, exist_ok=True)
        pki = assets.write_pki(w / "pki")
        ca, crt, key = (str(pki[k]) for k in ("ca", "cert", "key"))
        ec, ep, api, kcm, sch = (free_port() for _ in range(5))

        etcd_url, peer_url = f"http://127.0.0.1:{ec}", f"http://127.0.0.1:{ep}"
        sup.spawn("etcd", [
            str(b / "etcd"), "--name=node0", f"--data-dir={w / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=node0={peer_url}", "--auto-compaction-retention=1",
            "--quota-backend-bytes=2147483648", "--unsafe-no-fsync=true", "--log-level=warn",
        ])
        sup.wait_until("etcd", lambda: _http_ok(f"{etcd_url}/health"), timeout)

        sup.spawn("kube-apiserver", [
            str(b / "kube-apiserver"), f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1", f"--secure-port={api}", f"--tls-cert-file={crt}",
            f"--tls-private-key-file={key}", f"--client-ca-file={ca}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={key}", f"--service-account-signing-key-file={key}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            "--service-cluster-ip-range=10.96.0.0/16", "--enable-priority-and-fairness=false",
            "--max-requests-inflight=0", "--max-mutating-requests-inflight=0",
        ])
        self.server = f"https://127.0.0.1:{api}"
        client_ctx = ssl.create_default_context(cafile=ca)
        client_ctx.load_cert_chain(crt, key)
        sup.wait_until("kube-apiserver", lambda: _https_ok(f"{self.server}/readyz", client_ctx), timeout)
        self.kubeconfig.write_text(assets.build_kubeconfig(self.server, pki["ca"], pki["cert"], pki["key"]))

        kc = str(self.kubeconfig)
        allow = "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"
        # --leader-elect=false: a restart on the same etcd would otherwise wait for the old lease.
        sup.spawn("kube-controller-manager", [
            str(b / "kube-controller-manager"), f"--kubeconfig={kc}", "--bind-address=127.0.0.1",
            f"--secure-port={kcm}", allow, f"--root-ca-file={ca}",
            f"--service-account-private-key-file={key}", "--leader-elect=false",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
        ])
        sup.spawn("kube-scheduler", [
            str(b / "kube-scheduler"), f"--kubeconfig={kc}", "--bind-address=127.0.0.1",
            f"--secure-port={sch}", allow, "--leader-elect=false",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
        ])
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        sup.wait_until("kube-controller-manager", lambda: _https_ok(f"https://127.0.0.1:{kcm}/healthz", insecure), timeout)
        sup.wait_until("kube-scheduler", lambda: _https_ok(f"https://127.0.0.1:{sch}/healthz", insecure), timeout)

        stages = w / "kwok-stages.yaml"
        docs = [yaml.safe_load((b / "kwok-stages" / f).read_text()) for f in assets.UPSTREAM_STAGE_FILES]
        stages.write_text(yaml.safe_dump_all(docs + assets.build_outcome_stages(), sort_keys=False))
        sup.spawn("kwok", [
            str(b / "kwok"), f"--kubeconfig={kc}", "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={assets.KWOK_NODE_ANNOTATION}=fake",
            "--cidr=10.244.0.0/16", "--node-lease-duration-seconds=40", f"--config={stages}",
        ])
        nodes = [assets.build_gpu_node(f"kwok-gpu-{i}", self.gpus_per_node) for i in range(self.gpu_nodes)]
        nodes += [assets.build_gpu_node(f"kwok-cpu-{i}", 0, pool="cpu") for i in range(self.cpu_nodes)]
        objects = nodes + [yaml.safe_load((b / "kwok-stages" / f).read_text()) for f in assets.UPSTREAM_OBJECT_FILES]
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        sup.wait_until("kwok", self._nodes_ready, timeout)
        self.wait_for_default_serviceaccount("default", timeout)
        self.write_state()

    def wait_for_default_serviceaccount(self, namespace: str, timeout: float = 60.0) -> None:
        """Block until the controller-manager made `namespace`'s `default` ServiceAccount.

        Until then the ServiceAccount admission plugin rejects every pod in that namespace.
        """
        self._sup.wait_until(
            "kube-controller-manager",
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode == 0,
            timeout,
        )

    def _nodes_ready(self) -> bool:
        out = self.kubectl("get", "nodes", "-o", "json").stdout
        ready = {
            n["metadata"]["name"]
            for n in json.loads(out)["items"]
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        }
        return ready >= set(self.node_names)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raise TestbedError with its stderr when `check` and it fails."""
        p = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, check=False, timeout=120,
        )
        if check and p.returncode:
            raise TestbedError(f"kubectl {' '.join(args)} failed: {p.stderr.strip()}")
        return p

    def write_state(self) -> Path:
        """Record pids and paths in workdir/state.json so another process can stop this cluster."""
        state = {"kind": "cluster", "kubeconfig": str(self.kubeconfig), "server": self.server, "processes": self._sup.procs}
        path = self.workdir / "state.json"
        path.write_text(json.dumps(state, indent=2))
        return path

    def stop(self) -> None:
        self._sup.stop()
        (self.workdir / "state.json").unlink(missing_ok=True)


class MinioServer:
    """A single-drive MinIO server on 127.0.0.1 with its data under `workdir/data`."""

    def __init__(
        self, bin_dir: Path, workdir: Path, *, access_key: str = "codeground",
        secret_key: str = "codeground-secret", die_with_parent: bool = True,
    ):
        self.bin_dir, self.workdir = Path(bin_dir), Path(workdir)
        self.access_key, self.secret_key = access_key, secret_key
        self._sup = _Supervisor(self.workdir, die_with_parent)
        self.endpoint = ""

    def __enter__(self) -> MinioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> MinioServer:
        port, console = free_port(), free_port()
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        self.endpoint = f"127.0.0.1:{port}"
        self._sup.spawn("minio", [
            str(self.bin_dir / "minio"), "server", "--quiet", "--address", self.endpoint,
            "--console-address", f"127.0.0.1:{console}", str(self.workdir / "data"),
        ], env={"MINIO_ROOT_USER": self.access_key, "MINIO_ROOT_PASSWORD": self.secret_key, "MINIO_BROWSER": "off"})
        try:
            self._sup.wait_until("minio", lambda: _http_ok(f"http://{self.endpoint}/minio/health/ready"), timeout)
        except BaseException:
            self.stop()
            raise
        state = {"kind": "minio", "endpoint": self.endpoint, "access_key": self.access_key,
                 "secret_key": self.secret_key, "processes": self._sup.procs}
        (self.workdir / "state.json").write_text(json.dumps(state, indent=2))
        return self

    def stop(self) -> None:
        self._sup.stop()
        (self.workdir / "state.json").unlink(missing_ok=True)


# --- `codeground dev cluster|minio up|down|status` -------------------------------------------


def _read_state(workdir: Path) -> dict[str, Any] | None:
    path = workdir / "state.json"
    if not path.exists():
        return None
    state: dict[str, Any] = json.loads(path.read_text())
    if all(_alive(p["pid"], p.get("exe")) for p in state["processes"].values()):
        return state
    stop_pids(state["processes"])  # partly dead: tidy up the rest
    path.unlink()
    return None


def _dev_command(args: argparse.Namespace) -> int:
    workdir = Path(args.dir) if args.dir else DEV_HOME / f"dev{args.target}"
    state = _read_state(workdir)
    if args.action == "status":
        if state is None:
            print(f"{args.target}: not running", file=sys.stderr)
            return 1
        print(state.get("kubeconfig") or state.get("endpoint"))
        return 0
    if args.action == "down":
        if state is not None:
            stop_pids(state["processes"])
            (workdir / "state.json").unlink(missing_ok=True)
        print(f"{args.target}: stopped", file=sys.stderr)
        return 0
    if state is None:
        shutil.rmtree(workdir, ignore_errors=True)  # fresh etcd / MinIO data each time
        if args.target == "cluster":
            bin_dir = find_binaries(("etcd", "kube", "kwok"))
            cp = ControlPlane(bin_dir, workdir, gpu_nodes=args.gpu_nodes, gpus_per_node=args.gpus_per_node,
                              die_with_parent=False).start()
            state = {"kubeconfig": str(cp.kubeconfig)}
        else:
            m = MinioServer(find_binaries(("minio",)), workdir, die_with_parent=False).start()
            state = {"endpoint": m.endpoint, "access_key": m.access_key, "secret_key": m.secret_key}
    if args.target == "cluster":
        print(f"cluster up; use it with: export KUBECONFIG={state['kubeconfig']}", file=sys.stderr)
        print(state["kubeconfig"])
    else:
        print(f"minio up: access key {state['access_key']}, secret key {state['secret_key']}", file=sys.stderr)
        print(state["endpoint"])
    return 0


def add_cli(subparsers: Any) -> None:
    """Register `dev cluster up|down|status` and `dev minio up|down|status`; handlers are `args.func(args) -> int`."""
    dev = subparsers.add_parser("dev", help="local test bed: real control plane with kwok GPU nodes, MinIO")
    targets = dev.add_subparsers(dest="target", required=True)
    cluster = targets.add_parser("cluster", help="etcd + kube-apiserver + controller-manager + scheduler + kwok")
    minio = targets.add_parser("minio", help="a MinIO server on 127.0.0.1")
    for p in (cluster, minio):
        p.add_argument("action", choices=["up", "down", "status"])
        p.add_argument("--dir", help="state and data directory (default ~/.cache/codeground/dev<target>)")
        p.set_defaults(func=_dev_command)
    cluster.add_argument("--gpu-nodes", type=int, default=4, help="kwok nodes with GPUs (default 4)")
    cluster.add_argument("--gpus-per-node", type=int, default=8, help="nvidia.com/gpu per node (default 8)")

"""Session-scoped pytest fixtures: a real control plane with kwok GPU nodes, and a real MinIO.

Loaded by tests/conftest.py (`pytest_plugins = ["tests.bed.fixtures"]`). Fixtures:
`kube_cluster` (session, a `KubeCluster`), `kube_namespace` (function, a fresh namespace name),
`minio_server` (session, a `MinioFixture`). Missing binaries are built by hack/build-binaries.sh
before the first cluster test (cold: tens of minutes, progress shown); nothing is skipped.

What it does not guarantee: isolation between tests beyond a fresh namespace; every cluster test in a
session shares one API server and the same four GPU nodes, so tests that fill GPUs must clean up.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codeground.operator.testbed import ControlPlane, MinioServer, TestbedError, find_binaries
from tests.bed.kubelet import HarnessKubelet

_counter = itertools.count()


class KubeCluster:
    """Handle on the running test cluster: kubeconfig, kubectl/helm helpers, API clients, namespaces."""

    def __init__(self, control_plane: ControlPlane, bin_dir: Path, workdir: Path):
        self.control_plane, self.bin_dir, self.workdir = control_plane, bin_dir, workdir
        self.kubeconfig: Path = control_plane.kubeconfig
        self.server: str = control_plane.server
        self.gpu_nodes: list[str] = [n for n in control_plane.node_names if n.startswith("kwok-gpu-")]

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run kubectl on this cluster (text output in `.stdout`); raise on failure when `check`."""
        return self.control_plane.kubectl(*args, input=input, check=check)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run helm on this cluster with private cache/config/data homes."""
        homes = {f"HELM_{k}_HOME": str(self.workdir / "helm" / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}
        p = subprocess.run(
            [str(self.bin_dir / "helm"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True, text=True, check=False, timeout=300, env={**os.environ, **homes},
        )
        if check and p.returncode:
            raise TestbedError(f"helm {' '.join(args)} failed: {p.stderr.strip()}")
        return p

    def api_client(self) -> Any:
        """A new kubernetes.client.ApiClient for this cluster (close it, or use it as a context manager)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def new_namespace(self, prefix: str = "test") -> str:
        """Create a namespace with a unique name and wait for its `default` ServiceAccount."""
        name = f"{prefix}-{os.getpid() % 10000}-{next(_counter)}"
        self.kubectl("create", "namespace", name)
        self.control_plane.wait_for_default_serviceaccount(name)
        return name

    def kubelet(self, namespace: str, **kwargs: Any) -> HarnessKubelet:
        """A HarnessKubelet for `namespace` (use as a context manager); kwargs go to HarnessKubelet."""
        return HarnessKubelet(self.api_client(), namespace, self.workdir / "kubelet", **kwargs)

    def finish_pod(self, namespace: str, pod: str, phase: str = "Succeeded", exit_code: int | None = None) -> None:
        """Drive a Running pod to `phase` ("Succeeded" or "Failed") through the kwok outcome Stages."""
        from codeground.operator.testbed_assets import EXIT_CODE_ANNOTATION, OUTCOME_ANNOTATION

        code = exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1)
        self.kubectl("annotate", "pod", pod, "-n", namespace, "--overwrite",
                     f"{OUTCOME_ANNOTATION}={phase}", f"{EXIT_CODE_ANNOTATION}={code}")


class MinioFixture(MinioServer):
    """A MinioServer with a client helper."""

    def client(self) -> Any:
        from minio import Minio

        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` if absent; return the name."""
        c = self.client()
        if not c.bucket_exists(name):
            c.make_bucket(name)
        return name


@contextlib.contextmanager
def _visible(request: pytest.FixtureRequest) -> Iterator[None]:
    """Show the build's progress on the terminal instead of pytest's capture."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        yield


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    with _visible(request):
        bin_dir = find_binaries(("etcd", "kube", "kwok", "helm"))
    workdir = tmp_path_factory.mktemp("kube")
    with ControlPlane(bin_dir, workdir / "cluster") as cp:
        yield KubeCluster(cp, bin_dir, workdir)


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    name = kube_cluster.new_namespace()
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def minio_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioFixture]:
    with _visible(request):
        bin_dir = find_binaries(("minio",))
    with MinioFixture(bin_dir, tmp_path_factory.mktemp("minio")) as server:
        yield server

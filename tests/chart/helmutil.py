"""Helpers of the chart tests: run helm on charts/codeground and parse what it renders.

Used by tests/chart and tests/e2e. helm comes from the test bed's binary cache
(`codeground.operator.testbed.find_binaries`), with private cache/config/data homes so the tests
never touch the user's helm setup. `helm template` gets `--kube-version` explicitly: a helm built from
source without the release ldflags believes the cluster is v1.20.0 and would refuse the chart's
`kubeVersion`.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "codeground"
ALL_VALUES = Path(__file__).with_name("values-all.yaml")
KUBE_VERSION = "1.35.4"

_homes = tempfile.mkdtemp(prefix="codeground-helm-")


def helm_env() -> dict[str, str]:
    return {**os.environ, **{f"HELM_{k}_HOME": f"{_homes}/{k.lower()}" for k in ("CACHE", "CONFIG", "DATA")}}


@functools.cache
def helm_path() -> Path:
    from codeground.operator.testbed import find_binaries

    return find_binaries(("helm",)) / "helm"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm; raise AssertionError with its stderr when `check` and it fails."""
    p = subprocess.run([str(helm_path()), *args], capture_output=True, text=True, env=helm_env(), timeout=120, check=False)
    if check and p.returncode:
        raise AssertionError(f"helm {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


def template_text(*args: str, release: str = "cg", namespace: str = "codeground-system") -> str:
    """`helm template` of the chart with extra args (e.g. ("-f", file) or ("--set", "k=v"))."""
    return helm("template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION, *args).stdout


def render(*args: str, **kwargs: Any) -> list[dict[str, Any]]:
    """The rendered objects (empty documents dropped)."""
    return [d for d in yaml.safe_load_all(template_text(*args, **kwargs)) if d]


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]

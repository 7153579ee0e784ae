"""Unit tests of the test bed's pure parts (no binaries, no cluster): manifests, PKI, harness helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from codeground.operator import testbed_assets as assets
from codeground.operator.testbed import TestbedError, find_binaries
from tests.bed.kubelet import _expand, _field, _map_paths


def test_gpu_node_advertises_gpus_and_is_managed_by_kwok() -> None:
    node = assets.build_gpu_node("kwok-gpu-0", gpus=8)
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["status"]["capacity"] == node["status"]["allocatable"]
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    cpu = assets.build_gpu_node("kwok-cpu-0", gpus=0, pool="cpu")
    assert "nvidia.com/gpu" not in cpu["status"]["capacity"] and "nvidia.com/gpu.present" not in cpu["metadata"]["labels"]


def test_outcome_stages_match_only_annotated_running_pods() -> None:
    stages = {s["metadata"]["name"]: s for s in assets.build_outcome_stages()}
    assert set(stages) == {"codeground-pod-succeeded", "codeground-pod-failed"}
    failed = stages["codeground-pod-failed"]["spec"]
    assert failed["selector"]["matchAnnotations"] == {assets.OUTCOME_ANNOTATION: "Failed"}
    assert {"key": ".status.phase", "operator": "In", "values": ["Running"]} in failed["selector"]["matchExpressions"]
    assert "phase: Failed" in failed["next"]["statusTemplate"]
    assert assets.EXIT_CODE_ANNOTATION in failed["next"]["statusTemplate"]
    assert "pod/fast/pod-complete.yaml" not in assets.UPSTREAM_STAGE_FILES


def test_pki_and_kubeconfig(tmp_path: Path) -> None:
    from cryptography import x509

    paths = assets.write_pki(tmp_path)
    cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    assert "O=system:masters" in cert.subject.rfc4514_string()
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    kc = yaml.safe_load(assets.build_kubeconfig("https://127.0.0.1:6443", paths["ca"], paths["cert"], paths["key"]))
    assert kc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert kc["users"][0]["user"]["client-key"] == str(paths["key"])


def test_find_binaries_names_what_a_prebuilt_dir_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etcd").touch()
    monkeypatch.setenv("CODEGROUND_BIN_DIR", str(tmp_path))
    assert find_binaries(("etcd",)) == tmp_path
    with pytest.raises(TestbedError, match="kube-apiserver"):
        find_binaries(("etcd", "kube"))


def test_harness_expands_vars_and_maps_mount_paths() -> None:
    assert _expand("$(A)/x $(MISSING) $$(A)", {"A": "a"}) == "a/x $(MISSING) $(A)"
    mounts = [("/etc/cfg", Path("/tmp/v/cfg")), ("/data", Path("/tmp/v/data"))]
    assert _map_paths("--config=/etc/cfg/a.yaml", mounts) == "--config=/tmp/v/cfg/a.yaml"
    assert _map_paths("/data", mounts) == "/tmp/v/data"
    assert _map_paths("/database /data2", mounts) == "/database /data2"  # whole path components only
    pod = {"metadata": {"name": "p", "labels": {"app": "x"}}, "spec": {"nodeName": "n"}}
    assert (_field(pod, "metadata.name"), _field(pod, "spec.nodeName"), _field(pod, "metadata.labels['app']")) == ("p", "n", "x")

"""Files and manifests the local test bed needs: PKI, kubeconfig, kwok GPU nodes and kwok Stages.

Called by `codeground.operator.testbed` (the `ControlPlane` that the pytest fixtures and
`codeground dev cluster up` start). Everything here is pure except `write_pki`, which writes PEM files.

The PKI follows kwokctl's layout (one CA, one admin cert that is at once the API server's serving
cert, every component's client cert and the service-account signing key). That is fine for a
throwaway loopback cluster and wrong for anything else: this module does not guarantee any security.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Any

# Annotation the test harness (tests/bed/kubelet.py) puts on a Running pod to end it; our kwok Stages
# below match it. Value "Succeeded" or "Failed"; the exit code and message come from the next two.
OUTCOME_ANNOTATION = "testbed.codeground.dev/outcome"
EXIT_CODE_ANNOTATION = "testbed.codeground.dev/exit-code"
MESSAGE_ANNOTATION = "testbed.codeground.dev/message"

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


def write_pki(directory: Path) -> dict[str, Path]:
    """Write ca.crt, admin.crt and admin.key (RSA 2048) into `directory`; return their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=365)

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "codeground-testbed-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sans: list[x509.GeneralName] = [
        x509.DNSName(n)
        for n in ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                  "kubernetes.default.svc.cluster.local", "localhost")
    ]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1", "10.96.0.1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, "kwok-admin"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
        ]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    paths = {"ca": directory / "ca.crt", "cert": directory / "admin.crt", "key": directory / "admin.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ))
    paths["key"].chmod(0o600)
    return paths


def build_kubeconfig(server: str, ca: Path, cert: Path, key: Path, name: str = "codeground-testbed") -> str:
    """Return kubeconfig YAML for `server` that authenticates with the admin client cert."""
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n"
        f"users:\n- name: {name}\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n"
        f"contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n"
        f"current-context: {name}\n"
    )


def build_gpu_node(name: str, gpus: int = 8, pool: str = "gpu-h100") -> dict[str, Any]:
    """A kwok-managed Node that advertises `gpus` x nvidia.com/gpu and GPU-pool labels.

    Labels mimic NVIDIA GPU feature discovery plus a pool label, so node selectors written for a
    real GPU pool also match here. No taint: pods need no toleration to land on these nodes.
    """
    resources = {"cpu": "96", "memory": "1Ti", "pods": "110", "ephemeral-storage": "1Ti"}
    if gpus:
        resources[GPU_RESOURCE] = str(gpus)
    labels = {
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": f"kwok-{gpus}gpu" if gpus else "kwok-cpu",
        "codeground.dev/pool": pool,
    }
    if gpus:
        labels |= {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": GPU_PRODUCT,
            "nvidia.com/gpu.count": str(gpus),
            "nvidia.com/gpu.memory": "81559",
        }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_NODE_ANNOTATION: "fake"}},
        "spec": {},
        "status": {"capacity": dict(resources), "allocatable": dict(resources)},
    }


def _outcome_stage(phase: str, default_exit: int) -> dict[str, Any]:
    """A kwok Stage that ends a Running pod annotated with OUTCOME_ANNOTATION=`phase`."""
    template = (
        "{{ $now := Now }}\n"
        "{{ $ann := or .metadata.annotations dict }}\n"
        f'{{{{ $code := or ( index $ann "{EXIT_CODE_ANNOTATION}" ) "{default_exit}" }}}}\n'
        f'{{{{ $msg := or ( index $ann "{MESSAGE_ANNOTATION}" ) "" }}}}\n'
        "conditions:\n"
        "- lastTransitionTime: {{ $now | Quote }}\n  status: \"True\"\n  type: Initialized\n"
        "- lastTransitionTime: {{ $now | Quote }}\n  status: \"False\"\n  type: Ready\n"
        "- lastTransitionTime: {{ $now | Quote }}\n  status: \"False\"\n  type: ContainersReady\n"
        "containerStatuses:\n"
        "{{ range .spec.containers }}\n"
        "- image: {{ .image | Quote }}\n  name: {{ .name | Quote }}\n  ready: false\n"
        "  restartCount: 0\n  started: false\n  state:\n    terminated:\n"
        "      exitCode: {{ $code }}\n      finishedAt: {{ $now | Quote }}\n"
        f"      reason: {'Completed' if phase == 'Succeeded' else 'Error'}\n"
        "      message: {{ $msg | Quote }}\n"
        "      startedAt: {{ $now | Quote }}\n"
        "{{ end }}\n"
        f"phase: {phase}\n"
    )
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": f"codeground-pod-{phase.lower()}"},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {
                "matchAnnotations": {OUTCOME_ANNOTATION: phase},
                "matchExpressions": [
                    {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                    {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                ],
            },
            "weight": 1000,
            "next": {"statusTemplate": template},
        },
    }


def build_outcome_stages() -> list[dict[str, Any]]:
    """kwok Stages that move Running pods to Succeeded or Failed when the test annotates them.

    They replace kwok's `pod-complete` fast stage (which would end every Job pod at once), so a test
    or the harness kubelet decides when and how each pod ends.
    """
    return [_outcome_stage("Succeeded", 0), _outcome_stage("Failed", 1)]


# Upstream kwok Stage files (relative to kwok's kustomize/stage dir) that the bed loads: node
# initialisation and lease heartbeat, Pending -> Running, deletion, and fake PVC provisioning and
# binding (for the `kwok-volume` StorageClass below). Not `pod/fast/pod-complete`: tests decide.
UPSTREAM_STAGE_FILES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-delete.yaml",
    "pod/chaos/pod-container-running-failed.yaml",
    "volume/fast/pvc-provision.yaml",
    "volume/fast/pv-bind.yaml",
    "volume/fast/pvc-delete.yaml",
    "volume/fast/pv-delete.yaml",
)
# Cluster objects (not Stages) applied once kwok runs: the default StorageClass its volume Stages serve.
UPSTREAM_OBJECT_FILES = ("volume/fast/storage-class.yaml",)

"""The test bed: real control plane and MinIO fixtures, and the harness kubelet (test-only)."""

"""The S3 backend against a real MinIO server (built from its Go module, started on 127.0.0.1)."""

from __future__ import annotations

import uuid

import pytest

from codeground.pipeline.errors import ArtifactError
from codeground.pipeline.lineage import trace
from codeground.pipeline.store import Manifest, S3Store

from .test_store import check_store_contract

pytestmark = pytest.mark.minio


@pytest.fixture()
def s3(minio_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", minio_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", minio_server.secret_key)
    bucket = minio_server.make_bucket(f"t-{uuid.uuid4().hex[:12]}")
    return S3Store(f"s3://{bucket}/prefix", endpoint=f"http://{minio_server.endpoint}")


def test_s3_store_contract(s3, tmp_path):
    check_store_contract(s3, tmp_path)
    assert s3.uri("r1/sft/manifest.json").startswith(f"s3://{s3.bucket}/prefix/")


def test_s3_failed_commit_leaves_nothing(s3, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    for i in range(3):
        (out / f"f{i}").write_bytes(b"x" * (i + 1))
    real_put = s3.put_file
    calls = []

    def flaky(key, path):
        calls.append(key)
        if len(calls) == 3:
            raise ArtifactError("upload failed: connection reset")
        real_put(key, path)

    monkeypatch.setattr(s3, "put_file", flaky)
    with pytest.raises(ArtifactError, match="connection reset"):
        s3.commit_stage(Manifest(run="r", stage="s", type="sft"), out)
    assert s3.list("r") == []


def test_s3_lineage_and_wrong_credentials(s3, tmp_path, minio_server):
    for stage, upstream in (("distill", None), ("sft", "distill")):
        out = tmp_path / stage
        out.mkdir()
        (out / "data.txt").write_text(stage)
        inputs = [s3.manifest_ref("r", upstream)] if upstream else []
        s3.commit_stage(Manifest(run="r", stage=stage, type=stage, inputs=inputs), out)
    chain = trace(s3.uri("r/sft/manifest.json"), endpoint=f"http://{minio_server.endpoint}")
    assert [e.manifest.stage for e in chain] == ["sft", "distill"] and chain[1].verified

    bad = S3Store(f"s3://{s3.bucket}/prefix", endpoint=f"http://{minio_server.endpoint}",
                  access_key="nobody", secret_key="wrong-secret")
    with pytest.raises(ArtifactError, match=r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied"):
        bad.get_bytes("r/sft/manifest.json")

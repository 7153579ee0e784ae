"""The artifact store: local backend semantics (the S3 backend runs the same checks against MinIO)."""

from __future__ import annotations

import os

import pytest

from codeground.pipeline.errors import ArtifactError
from codeground.pipeline.store import LocalStore, Manifest, open_store, sha256_bytes


def check_store_contract(store, tmp_path):
    """Behaviour every backend must have; shared with the MinIO test."""
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "weights.bin").write_bytes(b"w" * 3000)
    (out / "trajectories.jsonl").write_text('{"a": 1}\n')
    uri = store.commit_stage(Manifest(run="r1", stage="sft", type="sft", metrics={"loss": 0.5},
                                      outputs={"model": "model"}), out)
    assert uri.endswith("r1/sft/manifest.json")
    m = store.read_manifest("r1", "sft")
    assert {f["path"] for f in m.files} == {"model/weights.bin", "trajectories.jsonl"}
    assert m.metrics == {"loss": 0.5}
    assert next(f for f in m.files if f["path"] == "trajectories.jsonl")["sha256"] == sha256_bytes(b'{"a": 1}\n')
    ref = store.manifest_ref("r1", "sft")
    assert ref["sha256"] == sha256_bytes(store.get_bytes("r1/sft/manifest.json"))
    dest = tmp_path / "dl"
    store.download_stage("r1", "sft", dest, subdir="model")
    assert (dest / "model" / "weights.bin").read_bytes() == b"w" * 3000
    assert not (dest / "trajectories.jsonl").exists()
    assert store.list("r1/sft") == ["r1/sft/manifest.json", "r1/sft/model/weights.bin", "r1/sft/trajectories.jsonl"]
    with pytest.raises(ArtifactError, match="does not exist"):
        store.get_bytes("r1/nope/manifest.json")
    assert store.read_manifest("r1", "nope") is None


def test_local_store_contract(tmp_path):
    check_store_contract(LocalStore(tmp_path / "store"), tmp_path)
    mode = (tmp_path / "store" / "r1" / "sft" / "manifest.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask(), oct(mode)  # readable like any file, not mkstemp's 0600


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


class FailingStore(LocalStore):
    """Fails on the n-th upload, like a network error mid-commit."""

    def __init__(self, root, fail_at):
        super().__init__(root)
        self.fail_at, self.calls = fail_at, 0

    def put_file(self, key, path):
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError("connection reset")
        super().put_file(key, path)


def test_failed_commit_leaves_nothing_behind(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for i in range(3):
        (out / f"f{i}").write_text(str(i))
    store = FailingStore(tmp_path / "store", fail_at=3)
    with pytest.raises(ArtifactError, match="connection reset"):
        store.commit_stage(Manifest(run="r", stage="s", type="sft"), out)
    assert store.list("r") == []
    assert store.read_manifest("r", "s") is None


def test_recommit_replaces_the_manifest(tmp_path):
    store = LocalStore(tmp_path / "store")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("1")
    store.commit_stage(Manifest(run="r", stage="s", type="sft", metrics={"x": 1}), out)
    (out / "a").write_text("2")
    store.commit_stage(Manifest(run="r", stage="s", type="sft", metrics={"x": 2}), out)
    assert store.read_manifest("r", "s").metrics == {"x": 2}
    assert store.get_bytes("r/s/a") == b"2"


def test_keys_cannot_escape_the_root(tmp_path):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ArtifactError, match="escapes"):
        store.put_bytes("../evil", b"x")


def test_open_store_rejects_unknown_schemes(tmp_path):
    with pytest.raises(ArtifactError, match="expected s3://"):
        open_store("gs://bucket/x")
    assert isinstance(open_store("rel", base_dir=tmp_path), LocalStore)
    assert open_store("rel", base_dir=tmp_path).root == (tmp_path / "rel").resolve()

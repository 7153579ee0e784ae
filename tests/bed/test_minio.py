"""The MinIO fixture serves the S3 API on loopback. Run: `pytest -m minio tests/bed`."""

from __future__ import annotations

import io
from typing import Any

import pytest


@pytest.mark.minio
def test_minio_put_and_get(minio_server: Any) -> None:
    bucket = minio_server.make_bucket("testbed")
    client = minio_server.client()
    client.put_object(bucket, "a/b.txt", io.BytesIO(b"hello"), 5)
    assert client.get_object(bucket, "a/b.txt").read() == b"hello"
    assert minio_server.endpoint.startswith("127.0.0.1:")


@pytest.mark.minio
def test_dev_minio_up_status_down(minio_server: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    import json

    from codeground.operator.testbed import _alive, add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    monkeypatch.setenv("CODEGROUND_BIN_DIR", str(minio_server.bin_dir))

    def dev(action: str) -> int:
        args = parser.parse_args(["dev", "minio", action, "--dir", str(tmp_path / "dev")])
        return int(args.func(args))

    assert dev("up") == 0
    assert capsys.readouterr().out.strip().startswith("127.0.0.1:")
    state = json.loads((tmp_path / "dev" / "state.json").read_text())
    assert dev("down") == 0
    assert not any(_alive(p["pid"]) for p in state["processes"].values())
    assert dev("status") == 1

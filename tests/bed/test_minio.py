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

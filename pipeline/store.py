"""Artifact store: a local directory (the default) or S3-compatible storage (MinIO, AWS).

Every stage reads its inputs and writes its outputs only through this interface. Layout::

    <prefix>/<run>/<stage>/manifest.json     # written last: its presence means "stage complete"
    <prefix>/<run>/<stage>/<files...>

A stage's outputs are committed with :meth:`ArtifactStore.commit_stage`: every file is uploaded
first (each object atomically: local files via rename, S3 objects are atomic per PUT), checked, and
only then the manifest. If any upload fails, the objects this commit wrote are deleted again, so a
reader never sees a manifest for missing files or a half-written object. The manifest records the
sha256 of every file and names upstream manifests by URI and sha256 (see :mod:`.lineage`).

What it does not guarantee: isolation between two writers of the same stage at the same time (the
operator runs one attempt per stage at a time), or garbage collection of files from failed attempts
beyond the rollback above.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ArtifactError

MANIFEST = "manifest.json"
_UMASK = os.umask(0o022)
os.umask(_UMASK)
CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class Manifest:
    """What one stage produced, and from what."""

    run: str
    stage: str
    type: str
    inputs: list[dict[str, str]] = field(default_factory=list)  # [{stage, uri, sha256}]
    parameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)  # [{path, sha256, size}]
    outputs: dict[str, str] = field(default_factory=dict)  # role -> path, e.g. {"model": "model/"}
    created_at: str = field(default_factory=now_rfc3339)

    def to_json(self) -> bytes:
        doc = {
            "apiVersion": "codeground.dev/v1alpha1",
            "kind": "StageManifest",
            "run": self.run,
            "stage": self.stage,
            "type": self.type,
            "createdAt": self.created_at,
            "inputs": self.inputs,
            "parameters": self.parameters,
            "metrics": self.metrics,
            "outputs": self.outputs,
            "files": self.files,
        }
        return json.dumps(doc, indent=2, sort_keys=False).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str = "manifest") -> Manifest:
        try:
            doc = json.loads(data)
            return cls(
                run=doc["run"],
                stage=doc["stage"],
                type=doc["type"],
                inputs=doc.get("inputs", []),
                parameters=doc.get("parameters", {}),
                metrics=doc.get("metrics", {}),
                files=doc.get("files", []),
                outputs=doc.get("outputs", {}),
                created_at=doc.get("createdAt", ""),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{source}: not a stage manifest ({exc})") from None


class ArtifactStore(ABC):
    """Keys are '/'-separated paths relative to the store's root (``<prefix>``)."""

    root_uri: str

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> None: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def uri(self, key: str) -> str:
        return f"{self.root_uri.rstrip('/')}/{key}"

    # -------------------------------------------------------------- stage-level operations
    def stage_prefix(self, run: str, stage: str) -> str:
        return f"{run}/{stage}"

    def manifest_key(self, run: str, stage: str) -> str:
        return f"{self.stage_prefix(run, stage)}/{MANIFEST}"

    def read_manifest(self, run: str, stage: str) -> Manifest | None:
        key = self.manifest_key(run, stage)
        if not self.exists(key):
            return None
        return Manifest.from_json(self.get_bytes(key), self.uri(key))

    def manifest_ref(self, run: str, stage: str) -> dict[str, str]:
        """``{stage, uri, sha256}`` of a committed manifest, for the next stage's ``inputs``."""
        key = self.manifest_key(run, stage)
        try:
            data = self.get_bytes(key)
        except ArtifactError:
            raise ArtifactError(f"stage {stage!r} of run {run!r} has no manifest at {self.uri(key)}") from None
        return {"stage": stage, "uri": self.uri(key), "sha256": sha256_bytes(data)}

    def commit_stage(self, manifest: Manifest, local_dir: str | Path) -> str:
        """Upload every file under ``local_dir`` then the manifest; return the manifest's URI.

        On any failure, objects written by this call are deleted and ArtifactError is raised.
        """
        local_dir = Path(local_dir)
        prefix = self.stage_prefix(manifest.run, manifest.stage)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
        written: list[str] = []
        try:
            # An earlier commit of the same stage is superseded: drop its manifest first, so no
            # reader pairs the old manifest with new files while this commit runs.
            old_manifest = self.manifest_key(manifest.run, manifest.stage)
            if self.exists(old_manifest):
                self.delete(old_manifest)
            entries = []
            for p in files:
                rel = p.relative_to(local_dir).as_posix()
                digest = sha256_file(p)
                self.put_file(f"{prefix}/{rel}", p)
                written.append(f"{prefix}/{rel}")
                entries.append({"path": rel, "sha256": digest, "size": p.stat().st_size})
            manifest.files = entries
            for entry in entries:  # verify before the manifest makes the files visible
                if not self.exists(f"{prefix}/{entry['path']}"):
                    raise ArtifactError(f"uploaded file {entry['path']} is missing from {self.uri(prefix)}")
            self.put_bytes(f"{prefix}/{MANIFEST}", manifest.to_json())
        except Exception as exc:
            for key in written:
                with contextlib.suppress(Exception):
                    self.delete(key)
            if isinstance(exc, ArtifactError):
                raise
            raise ArtifactError(f"committing stage {manifest.stage!r} to {self.uri(prefix)} failed: {exc}") from exc
        return self.uri(f"{prefix}/{MANIFEST}")

    def download_stage(self, run: str, stage: str, dest: str | Path, subdir: str = "") -> Manifest:
        """Fetch a committed stage's files (optionally only those under ``subdir``), verifying sha256."""
        manifest = self.read_manifest(run, stage)
        if manifest is None:
            raise ArtifactError(f"stage {stage!r} of run {run!r} is not committed in {self.root_uri}")
        dest = Path(dest)
        prefix = self.stage_prefix(run, stage)
        for entry in manifest.files:
            if subdir and not entry["path"].startswith(subdir.rstrip("/") + "/"):
                continue
            target = dest / entry["path"]
            if target.exists() and target.stat().st_size == entry["size"] and sha256_file(target) == entry["sha256"]:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            self.get_file(f"{prefix}/{entry['path']}", target)
            if sha256_file(target) != entry["sha256"]:
                raise ArtifactError(f"{self.uri(prefix + '/' + entry['path'])}: sha256 mismatch")
        return manifest


class LocalStore(ArtifactStore):
    """A directory on the local filesystem; writes go to a temp file then rename (atomic)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root_uri = str(self.root)

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root not in p.parents and p != self.root:
            raise ArtifactError(f"key {key!r} escapes the store root {self.root}")
        return p

    def _atomic_write(self, key: str, writer: Any) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual mode
            with os.fdopen(fd, "wb") as f:
                writer(f)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: str | Path) -> None:
        src = Path(path).resolve()
        if src == self._path(key):
            return
        with open(src, "rb") as s:
            self._atomic_write(key, lambda f: shutil.copyfileobj(s, f, CHUNK))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"{self.uri(key)} does not exist") from None

    def get_file(self, key: str, path: str | Path) -> None:
        src = self._path(key)
        if not src.exists():
            raise ArtifactError(f"{self.uri(key)} does not exist")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if src.resolve() != Path(path).resolve():
            shutil.copyfile(src, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store(ArtifactStore):
    """S3-compatible storage through the ``minio`` client (works with MinIO and AWS S3)."""

    def __init__(self, uri: str, *, endpoint: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None, region: str | None = None):
        try:
            from minio import Minio
        except ImportError as exc:  # pragma: no cover - depends on extras
            raise ArtifactError("s3:// artifacts need the s3 extra: pip install 'codeground[s3]'") from exc
        rest = uri[len("s3://"):]
        self.bucket, _, prefix = rest.partition("/")
        if not self.bucket:
            raise ArtifactError(f"artifacts.uri {uri!r}: expected s3://bucket/prefix")
        self.prefix = prefix.strip("/")
        self.root_uri = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com"
        secure = not endpoint.startswith("http://")
        host = endpoint.split("://", 1)[-1].rstrip("/")
        self.client = Minio(
            host,
            access_key=access_key or os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY"),
            secure=secure,
            region=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _wrap(self, what: str, key: str, fn: Any) -> Any:
        from minio.error import MinioException, S3Error

        try:
            return fn()
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise ArtifactError(f"{self.uri(key)} does not exist ({exc.code})") from None
            raise ArtifactError(f"{what} {self.uri(key)} failed: {exc.code}: {exc.message}") from None
        except (MinioException, OSError) as exc:
            raise ArtifactError(f"{what} {self.uri(key)} failed: {exc}") from None

    def put_file(self, key: str, path: str | Path) -> None:
        self._wrap("upload", key, lambda: self.client.fput_object(self.bucket, self._key(key), str(path)))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._wrap(
            "upload", key, lambda: self.client.put_object(self.bucket, self._key(key), io.BytesIO(data), len(data))
        )

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            resp = self.client.get_object(self.bucket, self._key(key))
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._wrap("download", key, get)

    def get_file(self, key: str, path: str | Path) -> None:
        # fget_object writes to a temp file and renames it, so a failed download leaves nothing.
        self._wrap("download", key, lambda: self.client.fget_object(self.bucket, self._key(key), str(path)))

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, self._key(key))
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"):
                return False
            raise ArtifactError(f"stat {self.uri(key)} failed: {exc.code}") from None

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0

        def run() -> list[str]:
            return sorted(o.object_name[strip:] for o in self.client.list_objects(self.bucket, prefix=full, recursive=True))

        return self._wrap("list", prefix, run)

    def delete(self, key: str) -> None:
        self._wrap("delete", key, lambda: self.client.remove_object(self.bucket, self._key(key)))


def open_store(uri: str, *, endpoint: str | None = None, base_dir: str | Path | None = None) -> ArtifactStore:
    """Open the store at ``uri``: ``s3://bucket/prefix`` or a local path (relative to ``base_dir``)."""
    if uri.startswith("s3://"):
        return S3Store(uri, endpoint=endpoint)
    if "://" in uri and not uri.startswith("file://"):
        raise ArtifactError(f"artifacts.uri {uri!r}: expected s3://bucket/prefix or a local path")
    path = Path(uri.removeprefix("file://"))
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return LocalStore(path)


def iter_jsonl(data: bytes) -> Iterator[dict[str, Any]]:
    for line in data.decode("utf-8").splitlines():
        if line.strip():
            yield json.loads(line)

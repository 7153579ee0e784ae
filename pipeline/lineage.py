"""Trace a stage's artifacts back through every upstream manifest: ``codeground lineage URI``.

Each manifest names its inputs by URI and sha256; this module follows them, checks each sha256
against the bytes it reads (a changed upstream manifest breaks the chain loudly), and returns the
chain from the given stage back to the first one (evaluate → grpo → sft → distill → teacher).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ArtifactError
from .store import MANIFEST, Manifest, open_store, sha256_bytes


@dataclass
class LineageEntry:
    uri: str
    sha256: str
    manifest: Manifest
    verified: bool  # sha256 matched what the downstream manifest recorded


def _split(uri: str) -> tuple[str, str]:
    """``<root>/<run>/<stage>/manifest.json`` → (root, "<run>/<stage>/manifest.json")."""
    parts = uri.rstrip("/").split("/")
    if parts[-1] != MANIFEST:
        parts.append(MANIFEST)
    if len(parts) < 4:
        raise ArtifactError(f"{uri}: expected <store>/<run>/<stage>/manifest.json")
    return "/".join(parts[:-3]), "/".join(parts[-3:])


def trace(uri: str, *, endpoint: str | None = None) -> list[LineageEntry]:
    chain: list[LineageEntry] = []
    queue: list[tuple[str, str | None]] = [(uri, None)]
    seen: set[str] = set()
    while queue:
        current, expected = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        root, key = _split(current)
        data = open_store(root, endpoint=endpoint).get_bytes(key)
        digest = sha256_bytes(data)
        if expected is not None and digest != expected:
            raise ArtifactError(f"{current}: sha256 is {digest}, but its downstream manifest recorded {expected}")
        manifest = Manifest.from_json(data, current)
        chain.append(LineageEntry(current, digest, manifest, expected is not None))
        for inp in reversed(manifest.inputs):
            queue.insert(0, (inp["uri"], inp.get("sha256")))
    return chain


def format_chain(chain: list[LineageEntry]) -> str:
    lines = []
    for i, e in enumerate(chain):
        m = e.manifest
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(m.metrics.items())[:6])
        check = "sha256 ok" if e.verified else "root"
        lines.append(f"{'  ' * min(i, 1)}{'└─ ' if i else ''}{m.stage} ({m.type}) {e.uri}")
        lines.append(f"{'  ' * min(i, 1)}{'   ' if i else ''}  {check} {e.sha256[:12]}  files={len(m.files)}  {metrics}")
        for role, rel in m.outputs.items():
            lines.append(f"{'  ' * min(i, 1)}{'   ' if i else ''}  {role}: {rel}")
    return "\n".join(lines)

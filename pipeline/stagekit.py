"""What every stage gets and returns, and the registry that maps a stage type to its code.

Called by the local runner (:mod:`.runner`) and by the stage entrypoint that runs in pods
(``codeground stage run``). A stage is a function ``run(ctx: StageContext) -> StageResult``. It reads
upstream artifacts through ``ctx`` (never from another stage's folder directly), writes its own files
under ``ctx.out_dir``, reports progress through ``ctx.progress`` and returns metrics; the caller commits
``out_dir`` and the manifest to the artifact store.

The built-in stages are imported lazily (``codeground validate`` must not import torch); tests can
:func:`override` a type with their own function.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import spec as api
from .errors import StageError
from .store import ArtifactStore, Manifest

log = logging.getLogger(__name__)

BUILTIN_STAGES = {
    "distill": "codeground.pipeline.stages.distill:run",
    "sft": "codeground.pipeline.stages.sft:run",
    "grpo": "codeground.pipeline.stages.grpo:run",
    "evaluate": "codeground.pipeline.stages.evaluate:run",
}
# Stage types whose code runs in the sandbox.
NEEDS_SANDBOX = {"distill", "grpo", "evaluate"}
# Stage types whose output is a model the next stage starts from.
PRODUCES_MODEL = {"sft", "grpo"}


class ProgressReporter:
    """Collects a running stage's progress and latest metrics and hands them to sinks.

    Sinks are callables taking ``{"progress": "12/80", "step": 12, "total": 80, "metrics": {...}}``:
    the local runner writes status.json, the pod entrypoint writes a file the operator reads.
    Updates are throttled to one per ``min_interval`` seconds except the last step.
    """

    def __init__(self, sinks: list[Callable[[dict[str, Any]], None]] | None = None, min_interval: float = 2.0):
        self.sinks = list(sinks or [])
        self.min_interval = min_interval
        self._last = 0.0
        self.state: dict[str, Any] = {"progress": None, "step": 0, "total": 0, "metrics": {}}

    def update(self, step: int, total: int, **metrics: float) -> None:
        self.state["step"], self.state["total"] = step, total
        self.state["progress"] = f"{step}/{total}"
        self.state["metrics"].update({k: float(v) for k, v in metrics.items()})
        now = time.monotonic()
        if now - self._last >= self.min_interval or step >= total:
            self._last = now
            for sink in self.sinks:
                try:
                    sink(dict(self.state, metrics=dict(self.state["metrics"])))
                except Exception:
                    log.exception("progress sink failed")


@dataclass
class StageContext:
    run: api.TrainingRun
    stage: api.StageSpec
    store: ArtifactStore
    workdir: Path
    upstream: dict[str, Manifest] = field(default_factory=dict)  # committed earlier stages, in spec order
    sandbox_endpoint: str | None = None
    resume: bool = False
    progress: ProgressReporter = field(default_factory=ProgressReporter)

    @property
    def out_dir(self) -> Path:
        """Everything written here is committed to the store when the stage returns."""
        p = self.workdir / "out"
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def checkpoint_dir(self) -> Path:
        """Local checkpoints, kept across attempts on the same machine; mirrored to the store by stages."""
        p = self.workdir / "checkpoints"
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def params(self) -> Any:
        return self.stage.params()

    def latest(self, *types: str) -> Manifest | None:
        """The nearest earlier committed stage of one of ``types``."""
        for manifest in reversed(list(self.upstream.values())):
            if manifest.type in types:
                return manifest
        return None

    def fetch(self, manifest: Manifest, subdir: str = "") -> Path:
        """Download an upstream stage's files (or one sub-folder) into the workdir; returns the folder."""
        dest = self.workdir / "inputs" / manifest.stage
        self.store.download_stage(manifest.run, manifest.stage, dest, subdir=subdir)
        return dest / subdir if subdir else dest

    def model_source(self) -> tuple[str, api.ModelRef]:
        """Where this stage's starting model is: ("artifact", ref to local dir) or ("spec", spec.model)."""
        upstream = self.latest(*PRODUCES_MODEL)
        if upstream is not None and "model" in upstream.outputs:
            local = self.fetch(upstream, upstream.outputs["model"])
            return "artifact", api.ModelRef(name=str(local))
        return "spec", self.run.spec.model

    def inputs(self) -> list[dict[str, str]]:
        return [self.store.manifest_ref(m.run, m.stage) for m in self.upstream.values()]


@dataclass
class StageResult:
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # role -> path relative to out_dir


StageFn = Callable[[StageContext], StageResult]
_overrides: dict[str, StageFn] = {}


def get_stage(stage_type: str) -> StageFn:
    if stage_type in _overrides:
        return _overrides[stage_type]
    target = BUILTIN_STAGES.get(stage_type)
    if target is None:
        raise StageError(f"unknown stage type {stage_type!r}; expected one of {', '.join(BUILTIN_STAGES)}")
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise StageError(
            f"stage type {stage_type!r} is not available: {exc}. Install the training extras: pip install 'codeground[train]'"
        ) from exc
    fn: StageFn = getattr(mod, attr)
    return fn


@contextmanager
def override(stage_type: str, fn: StageFn) -> Iterator[None]:
    """Run ``fn`` for every stage of ``stage_type`` inside the block (tests, plug-ins)."""
    previous = _overrides.get(stage_type)
    _overrides[stage_type] = fn
    try:
        yield
    finally:
        if previous is None:
            _overrides.pop(stage_type, None)
        else:
            _overrides[stage_type] = previous


def run_stage(ctx: StageContext) -> str:
    """Run one stage and commit its outputs; returns the manifest URI. The caller handles status."""
    fn = get_stage(ctx.stage.type)
    log.info("stage %s (%s) starting with %s", ctx.stage.name, ctx.stage.type, json.dumps(
        ctx.stage.params().model_dump(by_alias=True, mode="json")))
    result = fn(ctx)
    for role, rel in result.outputs.items():
        if not (ctx.out_dir / rel).exists():
            raise StageError(f"stage {ctx.stage.name}: output {role!r} ({rel}) was not written")
    manifest = Manifest(
        run=ctx.run.metadata.name,
        stage=ctx.stage.name,
        type=ctx.stage.type,
        inputs=ctx.inputs(),
        parameters=ctx.stage.params().model_dump(by_alias=True, mode="json"),
        metrics={k: float(v) for k, v in result.metrics.items()},
        outputs=result.outputs,
    )
    return ctx.store.commit_stage(manifest, ctx.out_dir)

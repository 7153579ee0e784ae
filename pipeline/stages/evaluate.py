"""The evaluate stage: the current model solves each benchmark in code; accuracy and behaviour metrics.

Called by the stage registry as ``run(ctx)``. The model is the latest sft/grpo artifact upstream, or
``spec.model`` (``ctx.model_source()``). For every benchmark in ``evaluate.benchmarks`` it samples
``samples`` trajectories per problem with the few-shot prompt of ``evaluate.shots`` and ``evaluate.template`` through the rollout engine and the sandbox, then computes the metrics of
:mod:`codeground.pipeline.rollout.metrics` per benchmark and over all of them.

Writes to ``ctx.out_dir``: ``metrics.json`` (per benchmark, overall, the tool-call histogram, rollout
timings, skipped dataset rows), ``report.html`` (plots embedded) and ``trajectories.jsonl`` (every
sample, for inspection). Returns flat metrics for the manifest and status: ``accuracy`` (mean avg@k
over benchmarks), ``<benchmark>.avg@k`` / ``pass@k`` / ``maj@k``, and the overall behaviour metrics.

What it does not do: use vLLM (transformers batches on CPU or GPU); compare with earlier evaluations.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from ..datasets import load_dataset_ref
from ..errors import StageError
from ..rollout import metrics as M
from ..rollout.engine import RolloutEngine
from ..rollout.factory import engine_concurrency, model_generator, rollout_progress
from ..rollout.report import write_report
from ..rollout.trajectory import Trajectory, write_jsonl
from ..stagekit import StageContext, StageResult

log = logging.getLogger(__name__)

METRICS = "metrics.json"
REPORT = "report.html"
TRAJECTORIES = "trajectories.jsonl"
FLAT_BEHAVIOUR = ("grounding_rate", "tool_calls", "tokens", "lines_of_code", "nl_share", "code_error_rate",
                  "answer_rate", "infra_retries", "infra_drops")


def _clean(v: Any) -> Any:
    """NaN (a metric with no samples behind it) becomes null in JSON."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def run(ctx: StageContext) -> StageResult:
    params = ctx.params
    spec = ctx.run.spec
    if not ctx.sandbox_endpoint:
        raise StageError("evaluate needs the sandbox: set CODEGROUND_SANDBOX_URL or run through `codeground run`")
    shots = params.shots
    benches = {}
    for name in params.benchmarks:
        ds = load_dataset_ref(spec.dataset(name), s3_endpoint=spec.artifacts.endpoint)
        if not ds.problems:
            raise StageError(f"benchmark {name!r} has no usable problems ({len(ds.skipped)} rows skipped)")
        benches[name] = ds
    origin, ref = ctx.model_source()
    log.info("evaluate: model %s (%s) on %s", ref.name, origin, ", ".join(f"{n} ({len(d)})" for n, d in benches.items()))
    concurrency = engine_concurrency(ctx.run)
    generator = model_generator(ref, batch_size=concurrency)

    total = sum(len(d) for d in benches.values()) * params.samples
    all_trajs: list[Trajectory] = []
    per_bench: dict[str, dict[str, Any]] = {}
    stats: dict[str, dict[str, float]] = {}
    correct, done = [0], [0]
    with rollout_progress(ctx, total, "evaluate", lambda: {"accuracy": correct[0] / max(1, done[0])}) as advance:
        offset = 0
        for name, ds in benches.items():
            def on_traj(n: int, _total: int, t: Trajectory, base: int = offset) -> None:
                done[0] = base + n
                correct[0] += bool(t.correct)
                advance(base + n)

            engine = RolloutEngine(
                generator, ctx.sandbox_endpoint, max_tool_calls=params.max_tool_calls, max_tokens=params.max_tokens,
                temperature=params.temperature, concurrency=concurrency, seed=spec.seed, shots=shots,
                template=params.template, lockstep=spec.deterministic,
                on_trajectory=on_traj,
            )
            problems = [dict(p, source=name) for p in ds.problems]
            trajs = engine.run(problems, params.samples)
            offset += len(trajs)
            all_trajs += trajs
            per_bench[name] = {**M.evaluate(trajs, k=params.samples), "skipped_rows": float(len(ds.skipped))}
            stats[name] = engine.stats.to_dict()

    overall = M.behaviour_metrics(all_trajs)
    k = params.samples
    overall["accuracy"] = sum(b.get(f"avg@{k}", 0.0) for b in per_bench.values()) / len(per_bench)
    doc = {
        "model": ref.name,
        "model_origin": origin,
        "samples": k,
        "temperature": params.temperature,
        "max_tool_calls": params.max_tool_calls,
        "max_tokens": params.max_tokens,
        "shots": shots,
        "benchmarks": per_bench,
        "overall": overall,
        "tool_call_histogram": {str(a): b for a, b in M.tool_call_histogram(all_trajs).items()},
        "skipped_rows": {n: d.skipped for n, d in benches.items()},
        "rollout": stats,
    }
    out = ctx.out_dir
    (out / METRICS).write_text(json.dumps(_clean(doc), indent=2), encoding="utf-8")
    write_report(doc, out / REPORT)
    write_jsonl(out / TRAJECTORIES, all_trajs)

    flat: dict[str, float] = {"accuracy": overall["accuracy"]}
    for name, b in per_bench.items():
        for key in (f"avg@{k}", f"pass@{k}", f"maj@{k}", "grounding_rate"):
            if key in b:
                flat[f"{name}.{key}"] = float(b[key])
    for key in FLAT_BEHAVIOUR:
        if key in overall:
            flat[key] = float(overall[key])
    flat = {key: v for key, v in flat.items() if not math.isnan(v)}
    return StageResult(metrics=flat, outputs={"metrics": METRICS, "report": REPORT, "trajectories": TRAJECTORIES})

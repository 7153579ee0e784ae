"""The distill stage: a teacher solves training problems in code; the filters keep the good trajectories.

Called by the stage registry (:mod:`codeground.pipeline.stagekit`) as ``run(ctx)``. Reads the dataset
named by ``distill.dataset`` (decontaminated against every evaluate stage's benchmarks when the
dataset asks for it), prompts the teacher (``spec.teacher``) with the few-shot template, samples
``samplesPerProblem`` trajectories per problem through the rollout engine and the sandbox at
``ctx.sandbox_endpoint``, then applies the filters of :mod:`codeground.pipeline.rollout.filters`.

Writes to ``ctx.out_dir``: ``trajectories.jsonl`` (kept; the sft stage's input), ``rejected.jsonl``
(dropped, with ``meta.drop_reason``), ``drops.json`` (the table of drop reasons, skipped dataset rows,
contaminated ids, rollout timings).

What it does not guarantee: any kept trajectory (an empty set is written and reported; the sft stage
refuses it with a clear message), or reproducible text across machines (batching changes sampling).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..datasets import load_training_set
from ..errors import StageError
from ..rollout.engine import RolloutEngine
from ..rollout.factory import engine_concurrency, rollout_progress, teacher_generator
from ..rollout.filters import apply_filters, drop_table
from ..rollout.metrics import behaviour_metrics
from ..rollout.trajectory import Trajectory, write_jsonl
from ..stagekit import StageContext, StageResult

log = logging.getLogger(__name__)

TRAJECTORIES = "trajectories.jsonl"
REJECTED = "rejected.jsonl"
DROPS = "drops.json"


def run(ctx: StageContext) -> StageResult:
    params = ctx.params
    spec = ctx.run.spec
    if spec.teacher is None:
        raise StageError("distill needs spec.teacher (the model that writes the trajectories)")
    if not ctx.sandbox_endpoint:
        raise StageError("distill needs the sandbox: set CODEGROUND_SANDBOX_URL or run through `codeground run`")
    data, contaminated = load_training_set(ctx.run, params.dataset, s3_endpoint=spec.artifacts.endpoint)
    if not data.problems:
        raise StageError(f"dataset {params.dataset!r} has no usable problems ({len(data.skipped)} rows skipped)")
    log.info("distill: %d problems × %d samples from %s (%d rows skipped, %d contaminated)", len(data),
             params.samples_per_problem, params.dataset, len(data.skipped), len(contaminated))

    generator = teacher_generator(spec.teacher)
    concurrency = engine_concurrency(ctx.run)
    if hasattr(generator, "batch_size"):
        generator.batch_size = concurrency
    total = len(data) * params.samples_per_problem
    solved, done = [0], [0]

    with rollout_progress(ctx, total, "distill", lambda: {"teacher_accuracy": solved[0] / max(1, done[0])}) as advance:

        def on_traj(n: int, _total: int, t: Trajectory) -> None:
            done[0] = n
            solved[0] += bool(t.correct)
            advance(n)

        engine = RolloutEngine(
            generator, ctx.sandbox_endpoint, max_tool_calls=params.max_tool_calls, max_tokens=params.max_tokens,
            temperature=params.temperature, concurrency=concurrency, seed=spec.seed, shots=params.shots,
            template=params.template, lockstep=spec.deterministic,
            on_trajectory=on_traj,
        )
        trajs = engine.run(data.problems, params.samples_per_problem)
    generator.close()

    kept, dropped = apply_filters(trajs, params.filters, dedupe=params.dedupe)
    for t, reason in dropped:
        t.meta["drop_reason"] = reason
    out = ctx.out_dir
    write_jsonl(out / TRAJECTORIES, kept)
    write_jsonl(out / REJECTED, [t for t, _ in dropped])
    table = drop_table(trajs, kept, dropped, params.filters)
    doc: dict[str, Any] = {
        **table,
        "filters": params.filters.model_dump(by_alias=True),
        "dedupe": params.dedupe,
        "dataset": params.dataset,
        "skipped_rows": data.skipped,
        "contaminated_ids": contaminated,
        "rollout": engine.stats.to_dict(),
    }
    (out / DROPS).write_text(json.dumps(doc, indent=2), encoding="utf-8")
    _print_table(table)

    behaviour = behaviour_metrics(trajs)
    scored = [t for t in trajs if t.scored]
    metrics = {
        "problems": float(len(data)),
        "samples": float(total),
        "kept": float(len(kept)),
        "keep_rate": len(kept) / total if total else 0.0,
        "teacher_accuracy": sum(bool(t.correct) for t in scored) / len(scored) if scored else 0.0,
        "tool_calls": behaviour.get("tool_calls", 0.0),
        "grounding_rate": behaviour.get("grounding_rate", 0.0),
        "infra_retries": float(engine.stats.infra_retries),
        "infra_drops": float(engine.stats.infra_drops),
        "skipped_rows": float(len(data.skipped)),
        "contaminated": float(len(contaminated)),
        "trajectories_per_s": engine.stats.to_dict()["trajectories_per_s"],
    }
    metrics.update({f"dropped.{row['reason']}": float(row["dropped"]) for row in table["reasons"] if row["dropped"]})
    if not kept:
        log.warning("distill kept no trajectory out of %d; see %s for why", total, DROPS)
    return StageResult(metrics=metrics, outputs={"trajectories": TRAJECTORIES, "drops": DROPS, "rejected": REJECTED})


def _print_table(table: dict[str, Any]) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"distill: kept {table['kept']} of {table['total']}")
    for col in ("reason", "dropped (first reason)", "share", "failing alone"):
        t.add_column(col, justify="left" if col == "reason" else "right")
    for row in table["reasons"]:
        t.add_row(row["reason"], str(row["dropped"]), f"{row['share']:.1%}", str(row["failing_alone"]))
    Console(file=sys.stderr).print(t)

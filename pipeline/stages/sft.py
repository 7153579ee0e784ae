"""The sft stage: TRL's SFTTrainer on the trajectories the latest distill stage kept.

Called by the stage registry (:mod:`..stagekit`) for stages of type ``sft``. Reads
``trajectories.jsonl`` from the nearest earlier distill stage, starts from the previous training
stage's model (else ``spec.model``) and writes a plain HF checkpoint to ``out/model``.

Loss only on the model's own tokens: each trajectory is pre-tokenised by
:func:`..rollout.tokenize.encode_trajectory` segment by segment, and ``labels`` are -100 on the prompt
and on every interpreter ```output block (TRL's ``assistant_only_loss`` cannot mask blocks inside an
assistant turn). With ``sft.shots`` / ``sft.template`` each trajectory is first re-prompted with the
student's prompt, so a teacher may have seen a richer one (context distillation); otherwise the
student trains on the teacher's prompt as written. Sequences longer than ``sft.maxLength`` are dropped, not cut (a cut trajectory
teaches the model to stop mid-solution). The global batch ``sft.batchSize`` is reached with gradient
accumulation over ``microBatchSize`` × world size.

What it does not guarantee: bitwise-identical results after ``--resume`` (data order is restored by
the Trainer, but kernels are not deterministic on GPU).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import StageError
from ..stagekit import StageContext, StageResult
from . import trainutil as tu

log = logging.getLogger(__name__)


def load_trajectories(ctx: StageContext) -> list[Any]:
    """Kept trajectories of the nearest earlier distill stage."""
    from ..rollout.trajectory import read_jsonl

    manifest = ctx.latest("distill")
    if manifest is None:
        raise StageError(f"stage {ctx.stage.name}: sft needs an earlier distill stage in spec.stages to train on")
    rel = manifest.outputs.get("trajectories", "trajectories.jsonl")
    path = ctx.fetch(manifest) / rel
    if not path.exists():
        raise StageError(f"stage {ctx.stage.name}: distill stage {manifest.stage!r} wrote no {rel}")
    trajs = [t for t in read_jsonl(path) if t.meta.get("kept", True)]
    if not trajs:
        raise StageError(
            f"stage {ctx.stage.name}: distill stage {manifest.stage!r} kept zero trajectories, nothing to train on. "
            "Loosen spec.stages[].distill.filters, sample more (samplesPerProblem) or use easier problems")
    return trajs


def student_prompt(shots: int | None, template: str | None) -> tuple[int, str | None] | None:
    """(shots, template) of sft.shots / sft.template, or None to keep the teacher's prompt (both unset)."""
    if shots is None and template is None:
        return None
    return (3 if shots is None else int(shots)), template


def reprompt(trajectories: list[Any], shots: int, template: str | None) -> list[Any]:
    """The trajectories with the student's prompt in place of the teacher's (solutions untouched)."""
    from dataclasses import replace

    from ..rollout.prompts import build_messages

    missing = [t.problem_id for t in trajectories if not t.problem.strip()]
    if missing:
        raise StageError(f"sft.shots/sft.template re-prompt trajectories from their problem text, but "
                         f"{len(missing)} have none (e.g. {missing[0]!r}); unset them to train on the teacher's prompt")
    return [replace(t, prompt=build_messages(t.problem, shots, template)) for t in trajectories]


def build_dataset(tok: Any, trajectories: list[Any], max_length: int) -> tuple[Any, dict[str, int]]:
    """A pre-tokenised ``datasets.Dataset`` (input_ids, labels) and counts of what was dropped."""
    from datasets import Dataset

    from ..rollout.tokenize import encode_trajectory

    rows, too_long, empty = [], 0, 0
    for t in trajectories:
        enc = encode_trajectory(tok, t)
        if len(enc["input_ids"]) > max_length:
            too_long += 1
            continue
        if not any(label != -100 for label in enc["labels"]):
            empty += 1
            continue
        rows.append({"input_ids": enc["input_ids"], "labels": enc["labels"]})
    if not rows:
        raise StageError(
            f"all {len(trajectories)} trajectories are longer than sft.maxLength={max_length} tokens "
            f"({too_long}) or have no model tokens ({empty}); raise maxLength")
    return Dataset.from_list(rows), {"dropped_too_long": too_long, "dropped_empty": empty, "examples": len(rows)}


def build_config(ctx: StageContext, n_examples: int, out: Path) -> Any:
    """TRL's SFTConfig from the spec (the stage's one config type: spec fields mapped, rest TRL defaults)."""
    from trl import SFTConfig

    p = ctx.params
    hw = tu.device_setup()
    per_step = p.micro_batch_size * hw["world_size"]
    accum = max(1, p.batch_size // per_step)
    steps_per_epoch = max(1, math.ceil(n_examples / (per_step * accum)))
    total = max(1, math.ceil(steps_per_epoch * p.epochs))
    return SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=p.micro_batch_size,
        gradient_accumulation_steps=accum,
        learning_rate=p.learning_rate,
        lr_scheduler_type=p.scheduler,
        warmup_steps=p.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        num_train_epochs=p.epochs,
        max_steps=total,
        max_length=None,  # already enforced (dropped, not truncated) in build_dataset
        logging_steps=1,
        save_strategy="steps",
        save_steps=max(1, total // 4),
        seed=ctx.run.spec.seed,
        data_seed=ctx.run.spec.seed,
        **hw["config"],
    )


def run(ctx: StageContext) -> StageResult:
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from .trainers import sft_trainer_class

    p = ctx.params
    trajectories = load_trajectories(ctx)
    student = student_prompt(p.shots, p.template)
    if student is not None:
        trajectories = reprompt(trajectories, *student)
        log.info("sft: trajectories re-prompted with the student's prompt (%d shots of %s)", student[0],
                 student[1] or "the default template")
    model, tok, source = tu.load_start_model(ctx)
    dataset, counts = build_dataset(tok, trajectories, p.max_length)
    ckpt_root = ctx.checkpoint_dir / "sft"
    resume_from = _resume_point(ctx, ckpt_root)
    config = build_config(ctx, len(dataset), ckpt_root)
    log.info("sft: %d examples (%s) from %s; %d steps of %d sequences", len(dataset), counts, source,
             config.max_steps, p.batch_size)
    metrics_log = tu.MetricsLog(ctx.out_dir / "metrics.jsonl", append=resume_from is not None)
    if resume_from is not None:  # steps after the checkpoint are trained (and logged) again
        metrics_log.truncate_after(int(resume_from.name.split("-")[1]))
    timing = {"t0": time.monotonic(), "steps": 0}

    with tu.progress_bar(f"sft {ctx.stage.name}", config.max_steps) as advance:

        class Report(TrainerCallback):
            def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
                if logs and "loss" in logs and state.is_world_process_zero:
                    row = {"step": state.global_step, "loss": float(logs["loss"]),
                           "learning_rate": float(logs.get("learning_rate", 0.0))}
                    metrics_log.write(row)
                    ctx.progress.update(state.global_step, state.max_steps, loss=row["loss"])
                    advance(state.global_step, loss=row["loss"])

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                timing["steps"] += 1
                if state.global_step >= state.max_steps:
                    control.should_save = True  # always checkpoint the last step

        trainer = sft_trainer_class(SFTTrainer)(model=model, args=config, train_dataset=dataset, processing_class=tok,
                             callbacks=[Report(), tu.make_checkpoint_callback(ctx, ckpt_root)])
        last_good = lambda: str(tu.complete_checkpoints(ckpt_root)[-1]) if tu.complete_checkpoints(ckpt_root) else None  # noqa: E731
        with tu.disk_errors("writing an sft checkpoint", last_good):
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    elapsed = time.monotonic() - timing["t0"]
    if tu.is_main_process():
        tu.save_plain_model(trainer.model, tok, ctx.out_dir / "model")
    losses = [r["loss"] for r in metrics_log.rows]
    metrics = {
        "train_loss": float(result.training_loss),
        "final_loss": losses[-1] if losses else float("nan"),
        "first_loss": losses[0] if losses else float("nan"),
        "steps": float(trainer.state.global_step),
        "seconds_per_step": elapsed / max(1, timing["steps"]),
        **{k: float(v) for k, v in counts.items()},
    }
    return StageResult(metrics=metrics, outputs={"model": "model", "metrics": "metrics.jsonl"})


def _resume_point(ctx: StageContext, ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint when resuming; a fresh attempt starts from an empty folder."""
    if not ctx.resume:
        shutil.rmtree(ckpt_root, ignore_errors=True)
        return None
    tu.restore_checkpoint(ctx, ckpt_root)
    tu.remove_incomplete(ckpt_root, tu.fingerprint(ctx))
    found = tu.complete_checkpoints(ckpt_root)
    if found:
        log.info("sft: resuming from %s", found[-1])
    return found[-1] if found else None

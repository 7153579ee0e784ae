"""The grpo stage: TRL's GRPOTrainer with multi-turn code rollouts, phase after phase of the curriculum.

Called by the stage registry (:mod:`..stagekit`) for stages of type ``grpo``. Starts from the previous
training stage's model (else ``spec.model``), trains on ``grpo.dataset`` and writes a plain HF
checkpoint to ``out/model``, the per-step metrics to ``out/metrics.jsonl`` and the curriculum's
per-prompt record to ``out/per_prompt.json``.

The recipe (CIR/THINC): no KL term (``beta=0`` loads no reference model), no entropy bonus, the
verifiable reward :func:`..rewards.math_reward` (or, with ``requireGrounded``, :func:`..rewards.grounded_math_reward`:
correct *and* printed by the interpreter), interpreter tokens masked from the loss (``env_mask``
from :mod:`.grpo_rollout`). Each curriculum phase gets a new trainer with its own budget (max length,
tool calls, steps) and prompt set; the model and the optimizer state carry over. Prompts use the format the SFT model
learned: the sft stage's student prompt (``sft.shots`` / ``sft.template``) when it set one, else the
distill stage's template and shot count.

Checkpoints: every ``checkpointEvery`` steps and at each phase end, under ``phase-K/checkpoint-N``
with the curriculum state inside; ``--resume`` continues mid-phase from the newest complete one.

What it does not guarantee: identical rollouts after a resume (see :mod:`.grpo_rollout`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import StageError
from ..stagekit import StageContext, StageResult
from . import curriculum
from . import trainutil as tu
from .grpo_rollout import RolloutFunc

log = logging.getLogger(__name__)


def load_problems(ctx: StageContext, shots: int, template: str | None) -> list[dict[str, Any]]:
    """Training problems with their chat prompts (decontaminated against the run's benchmarks)."""
    from ..datasets import load_training_set
    from ..rollout.prompts import build_messages

    ds, _ = load_training_set(ctx.run, ctx.params.dataset, s3_endpoint=ctx.run.spec.artifacts.endpoint)
    if not ds.problems:
        raise StageError(f"stage {ctx.stage.name}: dataset {ctx.params.dataset!r} has no usable problems")
    return [dict(p, messages=build_messages(p["problem"], shots, template)) for p in ds.problems]


def prompt_format(ctx: StageContext) -> tuple[int, str | None]:
    """The prompt the SFT model was trained on: the sft stage's student prompt when it set one, else the
    distill stage's shots and template, else the 3-shot default."""
    from .sft import student_prompt

    sft = ctx.latest("sft")
    student = student_prompt(sft.parameters.get("shots"), sft.parameters.get("template")) if sft else None
    if student is not None:
        return student
    distill = ctx.latest("distill")
    if distill is None:
        return 3, None
    return int(distill.parameters.get("shots", 3)), distill.parameters.get("template")


def check_lengths(ctx: StageContext, tok: Any, model: Any, problems: list[dict[str, Any]]) -> int:
    """Validate every phase's budget against the prompts before training anything; returns the longest prompt."""
    from ..rollout.tokenize import prompt_ids

    longest = max(len(prompt_ids(tok, p["messages"])) for p in problems[:256])
    context = getattr(model.config, "max_position_embeddings", None)
    for k, phase in enumerate(ctx.params.curriculum):
        where = f"spec.stages[{ctx.stage.name}].grpo.curriculum[{k}].maxLength"
        if phase.max_length < longest:
            raise StageError(f"{where}={phase.max_length} is below the prompt length ({longest} tokens); "
                             f"raise it to at least {longest} (or use fewer shots)")
        if context and longest + phase.max_length > context:
            raise StageError(f"{where}={phase.max_length} plus the prompt ({longest} tokens) exceeds the model's "
                             f"context of {context} tokens; lower it to {context - longest}")
    return longest


def build_config(ctx: StageContext, k: int, out: Path, hw: dict[str, Any]) -> Any:
    """TRL's GRPOConfig for curriculum phase ``k`` (spec fields mapped; the rest TRL defaults)."""
    from trl import GRPOConfig

    p, phase = ctx.params, ctx.params.curriculum[k]
    accum = max(1, p.prompts_per_step // hw["world_size"])
    use_vllm = False
    if hw["cuda"]:
        import importlib.util

        use_vllm = importlib.util.find_spec("vllm") is not None
    return GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=p.num_generations,  # one group per micro-batch
        gradient_accumulation_steps=accum,  # promptsPerStep groups per optimizer step, one rollout call
        num_generations=p.num_generations,
        max_completion_length=phase.max_length,
        max_steps=phase.steps,
        learning_rate=p.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=p.kl_coefficient,
        entropy_coef=p.entropy_coefficient,
        loss_type=p.loss_type,
        temperature=p.temperature,
        num_iterations=1,
        logging_steps=1,
        save_strategy="steps",
        save_steps=p.checkpoint_every,
        seed=ctx.run.spec.seed + k,
        use_vllm=use_vllm,
        vllm_mode="colocate",
        **hw["config"],
    )


def _resume_state(ctx: StageContext, root: Path) -> tuple[Path | None, dict[str, Any]]:
    if not ctx.resume:
        shutil.rmtree(root, ignore_errors=True)
        return None, {}
    tu.restore_checkpoint(ctx, root)
    found: list[tuple[int, int, Path]] = []
    expected = tu.fingerprint(ctx)
    for phase_dir in sorted(root.glob("phase-*")):
        tu.remove_incomplete(phase_dir, expected)
        for c in tu.complete_checkpoints(phase_dir):
            found.append((int(phase_dir.name.split("-")[1]), int(c.name.split("-")[1]), c))
    if not found:
        return None, {}
    ckpt = max(found)[2]
    state = json.loads((ckpt / tu.STATE_FILE).read_text())
    log.info("grpo: resuming phase %d from %s", state["phase"], ckpt)
    return ckpt, state


def run(ctx: StageContext) -> StageResult:
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from ..rewards import grounded_math_reward, math_reward
    from .trainers import trainer_class

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    p = ctx.params
    if not ctx.sandbox_endpoint:
        raise StageError(f"stage {ctx.stage.name}: grpo runs code and needs the sandbox service (no endpoint given)")
    hw = tu.device_setup()
    shots, template = prompt_format(ctx)
    problems = load_problems(ctx, shots, template)
    model, tok, source = tu.load_start_model(ctx)
    longest = check_lengths(ctx, tok, model, problems)
    root = ctx.checkpoint_dir / "grpo"
    resume_ckpt, state = _resume_state(ctx, root)
    start_phase = int(state.get("phase", 0))
    previous: curriculum.Record = state.get("previous", {})
    records: dict[str, Any] = state.get("records", {})
    offsets = curriculum.phase_offsets([ph.steps for ph in p.curriculum])
    total = sum(ph.steps for ph in p.curriculum)
    metrics_log = tu.MetricsLog(ctx.out_dir / "metrics.jsonl", append=resume_ckpt is not None)
    if resume_ckpt is not None:
        metrics_log.truncate_after(offsets[start_phase] + int(resume_ckpt.name.split("-")[1]))
    rollout = RolloutFunc(tok, ctx.sandbox_endpoint, temperature=p.temperature, seed=ctx.run.spec.seed,
                          lockstep=ctx.run.spec.deterministic)
    log.info("grpo: %d problems (prompts up to %d tokens) from %s; %d phases, %d steps", len(problems), longest,
             source, len(p.curriculum), total)
    optimizer = None
    t_start = time.monotonic()
    step_times: list[float] = []

    with tu.progress_bar(f"grpo {ctx.stage.name}", total, start=offsets[start_phase]) as advance:
        for k in range(start_phase, len(p.curriculum)):
            phase = p.curriculum[k]
            chosen, dropped = curriculum.phase_problems(problems, phase.drop_solved, previous)
            records.setdefault(f"phase-{k}", {"dropped": dropped, "kept": len(chosen), "record": {}})
            if not chosen:
                log.info("grpo phase %d: every prompt was solved in all samples; skipping", k)
                previous = {}
                continue
            resuming_here = resume_ckpt is not None and k == start_phase
            rollout.set_phase(chosen, phase.max_length, phase.max_tool_calls,
                              state.get("record") if resuming_here else None)
            reward = grounded_math_reward if p.require_grounded else math_reward
            trainer = _phase_trainer(ctx, k, chosen, model, tok, optimizer, rollout, hw, root, reward,
                                     previous, records, offsets, total, metrics_log, advance, step_times,
                                     TrainerCallback, _trainer_class(GRPOTrainer, trainer_class))
            last_good = _last_good(root)
            with tu.disk_errors(f"writing a grpo checkpoint of phase {k}", last_good):
                trainer.train(resume_from_checkpoint=str(resume_ckpt) if resuming_here else None)
            model = trainer.accelerator.unwrap_model(trainer.model)
            optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
            records[f"phase-{k}"]["record"] = rollout.record
            previous = rollout.record
            del trainer
    if tu.is_main_process():
        tu.save_plain_model(model, tok, ctx.out_dir / "model")
    (ctx.out_dir / "per_prompt.json").write_text(json.dumps(records, indent=1))
    return StageResult(metrics=_summary(metrics_log.rows, time.monotonic() - t_start, step_times),
                       outputs={"model": "model", "metrics": "metrics.jsonl", "per_prompt": "per_prompt.json"})


def _trainer_class(trl_class: Any, ours: Any) -> Any:
    """Our GRPOTrainer (exact shortcuts, see :mod:`.trainers`); ``CODEGROUND_GRPO_SHORTCUTS=0`` gives
    TRL's own, the baseline bench/training.py measures against."""
    if os.environ.get("CODEGROUND_GRPO_SHORTCUTS", "1") == "0":
        log.info("grpo: CODEGROUND_GRPO_SHORTCUTS=0, TRL's GRPOTrainer as is")
        return trl_class
    return ours(trl_class)


def _last_good(root: Path) -> Any:
    def find() -> str | None:
        found = [c for d in root.glob("phase-*") for c in tu.complete_checkpoints(d)]
        return str(max(found, key=lambda c: (c.parent.name, int(c.name.split("-")[1])))) if found else None
    return find


def _phase_trainer(ctx: StageContext, k: int, chosen: list[dict[str, Any]], model: Any, tok: Any, optimizer: Any,
                   rollout: RolloutFunc, hw: dict[str, Any], root: Path, reward: Any, previous: curriculum.Record,
                   records: dict[str, Any], offsets: list[int], total: int, metrics_log: tu.MetricsLog,
                   advance: Any, step_times: list[float], callback_base: Any, trainer_cls: Any) -> Any:
    from datasets import Dataset

    config = build_config(ctx, k, root / f"phase-{k}", hw)
    data = Dataset.from_list([{"prompt": c["messages"], "answer": c["answer"], "problem_id": c["id"]} for c in chosen])

    def state() -> dict[str, Any]:
        return {"phase": k, "record": rollout.record, "previous": previous, "records": records}

    made: list[Any] = []  # the trainer, once built (its zero-advantage skip count goes into each row)
    skipped_before = [0]

    class Report(callback_base):
        def on_step_begin(self, args: Any, st: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.monotonic()

        def on_step_end(self, args: Any, st: Any, control: Any, **kw: Any) -> None:
            step_times.append(time.monotonic() - getattr(self, "t0", time.monotonic()))
            if st.global_step >= st.max_steps:
                control.should_save = True  # checkpoint at each phase end

        def on_log(self, args: Any, st: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if not logs or "reward" not in logs or not rollout.pending or not st.is_world_process_zero:
                return
            pending, rollout.pending = rollout.pending, []
            row: dict[str, Any] = {"step": offsets[k] + st.global_step, "phase": k, "phase_step": st.global_step,
                                   "reward": float(logs["reward"]), "reward_std": float(logs.get("reward_std", 0.0)),
                                   "loss": float(logs.get("loss", 0.0))}
            for key in pending[0]:
                row[key] = sum(p[key] for p in pending) / len(pending)
            skipped = int(getattr(made[0], "skipped_rows", 0)) if made else 0
            row["skipped_rows"], skipped_before[0] = skipped - skipped_before[0], skipped
            if step_times:
                row["step_s"] = step_times[-1]
                row["train_s"] = max(0.0, step_times[-1] - row["rollout_s"])
            metrics_log.write(row)
            shown = {m: row[m] for m in ("reward", "accuracy", "tool_calls", "grounded", "response_tokens")}
            ctx.progress.update(row["step"], total, **shown)
            advance(row["step"], **shown)

    trainer = trainer_cls(model=model, reward_funcs=[reward], args=config, train_dataset=data, processing_class=tok,
                          rollout_func=rollout, optimizers=(optimizer, None),
                          callbacks=[Report(), tu.make_checkpoint_callback(ctx, root, state)])
    made.append(trainer)
    return trainer


def _summary(rows: list[dict[str, Any]], elapsed: float, step_times: list[float]) -> dict[str, float]:
    if not rows:
        return {"steps": 0.0, "seconds": elapsed}
    n = max(1, len(rows) // 4)
    first, last = rows[:n], rows[-n:]

    def mean(rs: list[dict[str, Any]], key: str) -> float:
        return sum(r.get(key, 0.0) for r in rs) / len(rs)

    out = {
        "steps": float(rows[-1]["step"]),
        "reward": mean(last, "reward"),
        "reward_first": mean(first, "reward"),
        "accuracy": mean(last, "accuracy"),
        "tool_calls": mean(last, "tool_calls"),
        "grounded": mean(last, "grounded"),
        "response_tokens": mean(last, "response_tokens"),
        "seconds": elapsed,
    }
    if step_times:
        out["seconds_per_step"] = sum(step_times) / len(step_times)
        for key in ("rollout_s", "generation_s", "execution_s", "train_s"):
            out[f"{key}_per_step"] = mean(rows, key)
    return out

"""TRL's ``rollout_func`` for the grpo stage: multi-turn code rollouts of the live policy.

Called by TRL's GRPOTrainer once per generation batch (one optimizer step here), with the prompts
already repeated ``num_generations`` times. Runs them all at once through
:class:`..rollout.engine.RolloutEngine` (generation batched, code executed concurrently in the
sandbox service) and returns per sample ``prompt_ids``, ``completion_ids`` (model and interpreter
tokens), ``logprobs`` (None: TRL recomputes them with the policy), and ``env_mask`` (1 = model token, 0 = interpreter
token; TRL multiplies it into the loss mask). Extra columns (correct, tool_calls, grounded) reach the
reward function as keyword arguments.

Also keeps what the stage logs per step (:attr:`RolloutFunc.pending`) and the per-prompt record the
curriculum's ``dropSolved`` needs (:attr:`RolloutFunc.record`).

What it does not guarantee: identical samples after a resume (the sampling seed depends on the step,
but batched sampling on GPU is not deterministic). Samples lost to the sandbox (infra errors) are
kept in the batch with a zero loss mask and reward 0 — TRL needs a completion per prompt — and
counted under ``dropped``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ..rollout.backends import TransformersGenerator
from . import curriculum

log = logging.getLogger(__name__)


def sandbox_client(endpoint: str) -> Any:
    """What the engine runs code through: the service URL (tests swap in an in-process double)."""
    return endpoint


def prompt_key(messages: Any) -> str:
    return json.dumps(messages, sort_keys=True)


class _CpuGenerator(TransformersGenerator):
    """Generation under bf16 autocast when training uses it (autocast is per thread: it is set here,
    in the engine's generation thread)."""

    def __init__(self, *a: Any, bf16: bool = False, **kw: Any):
        super().__init__(*a, **kw)
        self.bf16 = bf16

    def generate(self, requests: list[Any]) -> list[Any]:
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return super().generate(requests)


class RolloutFunc:
    """Callable ``(prompts, trainer) -> dict`` TRL accepts as ``rollout_func``."""

    def __init__(self, tokenizer: Any, sandbox: Any, *, temperature: float, seed: int, max_output_chars: int = 1024,
                 lockstep: bool = False):
        self.tokenizer, self.sandbox, self.lockstep = tokenizer, sandbox, lockstep
        self.temperature, self.seed, self.max_output_chars = temperature, seed, max_output_chars
        self.problems: dict[str, dict[str, Any]] = {}
        self.max_length, self.max_tool_calls = 256, 1
        self.record: curriculum.Record = {}
        self.pending: list[dict[str, float]] = []
        self.calls = 0
        self._vllm_generator: Any = None

    def set_phase(self, problems: list[dict[str, Any]], max_length: int, max_tool_calls: int,
                  record: curriculum.Record | None = None) -> None:
        self.problems = {prompt_key(p["messages"]): p for p in problems}
        self.max_length, self.max_tool_calls = max_length, max_tool_calls
        self.record = {k: list(v) for k, v in (record or {}).items()}

    def _generator(self, trainer: Any) -> Any:
        from ..rollout.backends import VllmGenerator

        if getattr(trainer, "use_vllm", False):  # GPU: TRL keeps the colocated vLLM weights in sync
            if self._vllm_generator is None:
                self._vllm_generator = VllmGenerator(trainer.vllm_generation.llm, self.tokenizer)
            return self._vllm_generator
        model = trainer.accelerator.unwrap_model(trainer.model)
        if trainer.args.bf16 and not trainer.args.use_cpu:
            return TransformersGenerator(model, self.tokenizer, batch_size=256)
        return _CpuGenerator(model, self.tokenizer, batch_size=256, bf16=bool(trainer.args.bf16))

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        from ..rollout.engine import RolloutEngine, rollout_batch
        from ..rollout.tokenize import turn_end_ids

        t0 = time.perf_counter()
        problems = [dict(self.problems[prompt_key(p)], messages=p) for p in prompts]
        # The engine's budget leaves room for the end-of-turn token encode_trajectory appends.
        budget = max(1, self.max_length - len(turn_end_ids(self.tokenizer)))
        engine = RolloutEngine(self._generator(trainer), sandbox_client(self.sandbox), max_tool_calls=self.max_tool_calls,
                               max_tokens=budget, temperature=self.temperature, concurrency=len(problems),
                               seed=self.seed + 7919 * self.calls, max_output_chars=self.max_output_chars,
                               lockstep=self.lockstep)
        self.calls += 1
        trajs, cols = rollout_batch(engine, self.tokenizer, problems, samples=1, max_completion_length=self.max_length)
        pad = self.tokenizer.eos_token_id
        scored = []
        for i, t in enumerate(trajs):
            if not t.scored:  # infra/backend failure: no loss, no credit
                cols["env_mask"][i] = [0] * max(1, len(cols["completion_ids"][i]))
                cols["completion_ids"][i] = cols["completion_ids"][i] or [pad]
                cols["correct"][i] = False
            else:
                scored.append(t)
        curriculum.add_results(self.record, [p["id"] for p, t in zip(problems, trajs, strict=True) if t.scored],
                               [bool(t.correct) for t in scored])
        n = max(1, len(scored))
        stats = engine.stats
        self.pending.append({
            "accuracy": sum(bool(t.correct) for t in scored) / n,
            "tool_calls": sum(t.tool_calls for t in scored) / n,
            "response_tokens": sum(len(c) for c in cols["completion_ids"]) / max(1, len(trajs)),
            "model_tokens": sum(sum(m) for m in cols["env_mask"]) / max(1, len(trajs)),
            "grounded": sum(bool(g) for g, t in zip(cols["grounded"], trajs, strict=True) if t.scored) / n,
            "code_errors": sum(t.code_errors for t in scored) / n,
            "truncated": sum(t.stop_reason == "max_tokens" for t in scored) / n,
            "dropped": float(len(trajs) - len(scored)),
            "rollout_s": time.perf_counter() - t0,
            "generation_s": stats.generation_s,
            "execution_s": stats.execution_s,
            "blocked_s": stats.blocked_s,
        })
        del cols["stop_reason"]  # strings; TRL forwards extras to reward functions only
        cols["logprobs"] = None  # TRL wants None, not a list of Nones, when it must recompute them
        return cols

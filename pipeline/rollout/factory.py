"""Builds generators and engines from the spec, and the progress display rollouts report to.

Called by the distill stage (:func:`teacher_generator`), the evaluate stage (:func:`model_generator`)
and both (:func:`rollout_progress`, :func:`engine_concurrency`). The grpo stage builds its own
:class:`~.backends.TransformersGenerator` around the policy it trains.

Teacher choice: ``teacher.endpoint`` → :class:`~.backends.OpenAIGenerator` (API key from
``$OPENAI_API_KEY``, which the operator fills from ``apiKeySecret``); ``teacher.vllm`` →
:class:`~.backends.VllmGenerator` when vllm imports, else transformers with a warning; otherwise
transformers in process.

What it does not do: start an external vLLM server (the operator's job), or pick GPUs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import CodegroundError
from .backends import Generator, OpenAIGenerator, TransformersGenerator, VllmGenerator
from .models import inference_dtype, load_model

log = logging.getLogger(__name__)


def _vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def teacher_generator(teacher: Any) -> Generator:
    """The distill stage's teacher from ``spec.teacher``."""
    if teacher.endpoint:
        tokenizer = None
        try:  # exact prompts through /v1/completions when the tokenizer is at hand (cache or folder)
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(teacher.model.name)
        except Exception:  # noqa: BLE001 - fall back to chat completions
            log.info("no local tokenizer for %s; using /chat/completions", teacher.model.name)
        return OpenAIGenerator(teacher.endpoint, teacher.model.name, tokenizer=tokenizer,
                               api_key=os.environ.get("OPENAI_API_KEY"))
    if teacher.vllm is not None:
        if _vllm_available():
            try:
                return VllmGenerator(teacher.model.name, tensor_parallel_size=teacher.vllm.gpus,
                                     max_model_len=teacher.vllm.max_model_len,
                                     gpu_memory_utilization=teacher.vllm.gpu_memory_utilization)
            except CodegroundError as exc:
                log.warning("vLLM teacher unavailable (%s); generating with transformers", exc)
        else:
            log.warning("teacher.vllm is set but vllm is not installed; generating with transformers")
    model, tok = load_model(teacher.model, dtype=inference_dtype())
    return TransformersGenerator(model, tok)


def model_generator(ref: Any, *, batch_size: int = 64) -> Generator:
    """The evaluate stage's model (a stage artifact folder or ``spec.model``), transformers in process."""
    model, tok = load_model(ref, dtype=inference_dtype())
    return TransformersGenerator(model, tok, batch_size=batch_size)


def engine_concurrency(run: Any, wanted: int = 64) -> int:
    """Concurrent trajectories: at most the sandbox's sessions per replica (more would get HTTP 429)."""
    limits = run.spec.sandbox.limits
    cap = limits.max_sessions if limits is not None else 64
    return max(1, min(wanted, cap))


@contextmanager
def rollout_progress(ctx: Any, total: int, description: str,
                     metric: Callable[[], dict[str, float]] | None = None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (stderr) plus ``ctx.progress`` updates; yields ``advance(done)``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
                  disable=os.environ.get("CODEGROUND_NO_PROGRESS") == "1") as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(done: int) -> None:
            extra = metric() if metric is not None else {}
            info = " ".join(f"{k}={v:.3f}" for k, v in extra.items())
            bar.update(task, completed=done, info=info)
            ctx.progress.update(done, total, **extra)

        yield advance

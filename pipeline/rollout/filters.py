"""The distill filters: which teacher trajectories are kept for SFT, and why the others were dropped.

Called by the distill stage with the spec's :class:`~codeground.pipeline.spec.DistillFilters`. Each
trajectory gets the *first* failing check as its drop reason, in this order:

1. ``infra_error`` / ``generation_error`` — the sandbox or the backend failed; never kept.
2. ``unfinished`` — the model did not end its turn with a ``\\boxed{}`` answer (token or tool budget
   hit, broken format); an SFT example must show a whole solution.
3. ``incorrect`` — (``requireCorrect``) the final answer is not the reference.
4. ``code_error`` — (``requireAllCodeRuns``) some executed cell did not run cleanly.
5. ``too_few_code_blocks`` — fewer executed cells than ``minCodeBlocks``.
6. ``too_much_natural_language`` — NL share of model tokens not below ``maxNaturalLanguageFraction``
   (1.0 switches the check off).
7. ``duplicate`` — (``dedupe``) same problem and same completion text as a trajectory kept earlier.

:func:`drop_table` counts every check independently as well, so the table also says how many
trajectories each filter alone would have removed.

What it does not do: near-duplicate detection (completion texts are compared after whitespace
normalisation only).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from .trajectory import Trajectory

REASONS = ("infra_error", "generation_error", "unfinished", "incorrect", "code_error", "too_few_code_blocks",
           "too_much_natural_language", "duplicate")
OK = ("ok", "output_truncated")


def failed_checks(t: Trajectory, filters: Any) -> list[str]:
    """Every check ``t`` fails (dedupe aside), in the order above."""
    out = []
    if t.stop_reason in ("infra_error", "generation_error"):
        return [t.stop_reason]
    if t.stop_reason != "answer" or t.final_answer is None:
        out.append("unfinished")
    if filters.require_correct and not t.correct:
        out.append("incorrect")
    if filters.require_all_code_runs and any(s not in OK for s in t.executed_statuses()):
        out.append("code_error")
    if t.tool_calls < filters.min_code_blocks:
        out.append("too_few_code_blocks")
    limit = filters.max_natural_language_fraction
    if limit < 1.0 and t.nl_fraction() >= limit:  # 1.0 switches the check off
        out.append("too_much_natural_language")
    return out


def _dedupe_key(t: Trajectory) -> tuple[str, str]:
    return t.problem_id, re.sub(r"\s+", " ", t.completion_text()).strip()


def apply_filters(trajs: list[Trajectory], filters: Any, *, dedupe: bool = True
                  ) -> tuple[list[Trajectory], list[tuple[Trajectory, str]]]:
    """``(kept, [(dropped, reason), ...])``; ``reason`` is the first failing check."""
    kept: list[Trajectory] = []
    dropped: list[tuple[Trajectory, str]] = []
    seen: set[tuple[str, str]] = set()
    for t in trajs:
        fails = failed_checks(t, filters)
        if fails:
            dropped.append((t, fails[0]))
            continue
        key = _dedupe_key(t)
        if dedupe and key in seen:
            dropped.append((t, "duplicate"))
            continue
        seen.add(key)
        kept.append(t)
    return kept, dropped


def drop_table(trajs: list[Trajectory], kept: list[Trajectory], dropped: list[tuple[Trajectory, str]],
               filters: Any) -> dict[str, Any]:
    """The ``drops.json`` document: totals, first-reason counts, and per-check counts."""
    first = Counter(reason for _, reason in dropped)
    each = Counter(r for t in trajs for r in failed_checks(t, filters))
    each["duplicate"] = first.get("duplicate", 0)
    total = len(trajs)
    rows = [
        {"reason": r, "dropped": first.get(r, 0), "share": first.get(r, 0) / total if total else 0.0,
         "failing_alone": each.get(r, 0)}
        for r in REASONS
    ]
    return {"total": total, "kept": len(kept), "dropped": len(dropped), "reasons": rows}

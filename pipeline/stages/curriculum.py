"""The GRPO curriculum between phases: which prompts a phase trains on, and the per-prompt record.

Called by :mod:`.grpo` before each phase (to pick prompts) and by :mod:`.grpo_rollout` (to record
every sample's correctness per prompt). Pure functions over plain data, so they are unit-tested
without a model. TRL has no pass-rate filter, hence this module.

``dropSolved`` (CIR's progressive budget keeps only prompts still worth learning from): a prompt is
dropped from phase k when every sample of it during phase k-1 was correct. Prompts phase k-1 never
sampled are kept. The record of phase k-1 travels inside every checkpoint of phase k, so a resumed
phase drops the same prompts.

What it does not guarantee: that a phase sees every one of its prompts (steps × promptsPerStep may be
fewer than the prompts; TRL samples them in a seeded shuffled order).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Record = dict[str, list[bool]]  # problem id -> correctness of each sample, in order


def solved_in_all_samples(record: Record) -> set[str]:
    return {pid for pid, results in record.items() if results and all(results)}


def phase_problems(problems: list[dict[str, Any]], drop_solved: bool, previous: Record | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The problems a phase trains on and the ids it dropped (in problem order)."""
    if not drop_solved or not previous:
        return list(problems), []
    solved = solved_in_all_samples(previous)
    kept = [p for p in problems if p["id"] not in solved]
    dropped = [p["id"] for p in problems if p["id"] in solved]
    return kept, dropped


def add_results(record: Record, ids: Iterable[str], correct: Iterable[bool]) -> None:
    for pid, ok in zip(ids, correct, strict=True):
        record.setdefault(pid, []).append(bool(ok))


def phase_offsets(steps: list[int]) -> list[int]:
    """Global step at which each phase starts (phases keep their planned steps even when skipped)."""
    out, total = [], 0
    for s in steps:
        out.append(total)
        total += s
    return out

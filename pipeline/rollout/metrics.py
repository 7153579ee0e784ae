"""Accuracy and behaviour metrics over trajectories, each with its written definition.

Called by the evaluate stage (per benchmark), the distill stage (summary of what the teacher did)
and the grpo stage (per-step logging of accuracy, tool calls and grounding). All functions are pure
and take :class:`~.trajectory.Trajectory` objects; samples dropped for infrastructure or backend
failures (``not traj.scored``) are excluded from every metric and counted separately.

Definitions (n = scored samples of a problem, c = correct ones among them):

- **avg@k** — mean over problems of c / n: the expected accuracy of one sample (THINC's avg@16).
- **pass@k** — mean over problems of the unbiased estimator 1 − C(n−c, k) / C(n, k) (Chen et al.,
  2021): the chance that at least one of k samples drawn without replacement is correct.
- **maj@k** — mean over problems of whether the most frequent final answer among the first k samples
  (answers grouped by equivalence; samples without an answer do not vote; ties go to the answer
  seen first) is correct.
- **grounding rate** — among samples with a final answer, the share whose answer appears in the
  output of one of its interpreter cells: a number in the output equal in value, or an
  output line equal after normalisation (THINC: "answers from interpreter output").
- **tool calls** — code cells executed per sample (mean, and a histogram).
- **tokens** — model + interpreter tokens per sample; **model tokens** alone are also reported.
- **lines of code** — non-blank lines inside the model's python blocks per sample.
- **natural-language share** — per sample, model tokens outside python blocks / model tokens; mean.
- **code error rate** — executed cells whose status is not ``ok`` (error, timeout, killed) / cells.
- **recovery@m (m = 1..5)** — among samples that had a run of at least m consecutive erroring cells,
  the share that still ended correct (THINC: recovery after 5 consecutive errors).
- **infra retries / drops** — sandbox failures survived by replay, and samples dropped for them.

What it does not do: weight problems (every problem counts once), or bootstrap confidence intervals.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

from ..rewards import is_equivalent, normalize_answer
from .trajectory import Trajectory

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
OK_STATUSES = ("ok", "output_truncated")
RECOVERY_RUNS = (1, 2, 3, 4, 5)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples, c correct (1 − C(n−c, k)/C(n, k))."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_answer(answers: Iterable[str | None]) -> str | None:
    """Most frequent answer by equivalence (first seen wins ties); None if no sample answered."""
    groups: list[list[str]] = []
    for a in answers:
        if a is None:
            continue
        for g in groups:
            if normalize_answer(g[0]) == normalize_answer(a) or is_equivalent(a, g[0]):
                g.append(a)
                break
        else:
            groups.append([a])
    if not groups:
        return None
    best = max(len(g) for g in groups)
    return next(g[0] for g in groups if len(g) == best)


def _value(s: str) -> Decimal | None:
    try:
        return Decimal(s.replace(",", ""))
    except InvalidOperation:
        return None


def is_grounded(traj: Trajectory) -> bool:
    """Whether the final answer appears in one of the interpreter outputs (see module docs)."""
    if traj.final_answer is None:
        return False
    ans = normalize_answer(traj.final_answer)
    if ans is None:
        return False
    ans_val = _value(ans) if re.fullmatch(r"-?[\d,]*\.?\d+", ans) else None
    for out in traj.interpreter_outputs():
        body = out.removeprefix("```output\n").removesuffix("```\n")
        if ans_val is not None:
            for m in _NUM.finditer(body):
                v = _value(m.group())
                if v is not None and v == ans_val:
                    return True
        for line in body.splitlines():
            line = line.strip()
            if line and len(line) <= 200 and (normalize_answer(line) == ans or (ans_val is None and is_equivalent(line, ans))):
                return True
    return False


def consecutive_error_runs(statuses: list[str]) -> int:
    """Length of the longest run of consecutive cells that did not run cleanly."""
    best = run = 0
    for s in statuses:
        run = run + 1 if s not in OK_STATUSES else 0
        best = max(best, run)
    return best


def by_problem(trajs: Iterable[Trajectory]) -> dict[str, list[Trajectory]]:
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        if t.scored:
            groups[t.problem_id].append(t)
    for g in groups.values():
        g.sort(key=lambda t: t.sample_index)
    return dict(groups)


def accuracy_metrics(trajs: Iterable[Trajectory], k: int | None = None) -> dict[str, float]:
    """avg@k, pass@j for j = 1, 2, 4, ... ≤ k, and maj@k over problems (k defaults to the min samples)."""
    groups = by_problem(trajs)
    if not groups:
        return {"problems": 0.0}
    n_min = min(len(g) for g in groups.values())
    k = min(k or n_min, n_min)
    out: dict[str, float] = {"problems": float(len(groups)), "samples_per_problem": float(k)}
    out[f"avg@{k}"] = sum(sum(bool(t.correct) for t in g[:k]) / k for g in groups.values()) / len(groups)
    js = sorted({j for j in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if j <= k} | {k})
    for j in js:
        out[f"pass@{j}"] = sum(pass_at_k(len(g), sum(bool(t.correct) for t in g), j) for g in groups.values()) / len(groups)
    maj = 0
    for g in groups.values():
        winner = majority_answer([t.final_answer for t in g[:k]])
        ref = g[0].reference
        maj += winner is not None and ref is not None and is_equivalent(winner, str(ref))
    out[f"maj@{k}"] = maj / len(groups)
    out["accuracy"] = out[f"avg@{k}"]
    return out


def behaviour_metrics(trajs: Iterable[Trajectory]) -> dict[str, float]:
    """Grounding, tool calls, tokens, lines of code, NL share, code error rate, recovery@1..5, infra."""
    all_t = list(trajs)
    ts = [t for t in all_t if t.scored]
    out: dict[str, float] = {
        "samples": float(len(ts)),
        "infra_drops": float(sum(t.stop_reason == "infra_error" for t in all_t)),
        "generation_errors": float(sum(t.stop_reason == "generation_error" for t in all_t)),
        "infra_retries": float(sum(t.infra_retries for t in all_t)),
    }
    if not ts:
        return out
    answered = [t for t in ts if t.final_answer is not None]
    out["answer_rate"] = len(answered) / len(ts)
    out["grounding_rate"] = sum(is_grounded(t) for t in answered) / len(answered) if answered else 0.0
    out["tool_calls"] = sum(t.tool_calls for t in ts) / len(ts)
    out["tokens"] = sum(t.model_tokens + t.interpreter_tokens for t in ts) / len(ts)
    out["model_tokens"] = sum(t.model_tokens for t in ts) / len(ts)
    out["lines_of_code"] = sum(t.lines_of_code() for t in ts) / len(ts)
    out["nl_share"] = sum(t.nl_fraction() for t in ts) / len(ts)
    statuses = [s for t in ts for s in t.executed_statuses()]
    out["code_error_rate"] = sum(s not in OK_STATUSES for s in statuses) / len(statuses) if statuses else 0.0
    runs = [(consecutive_error_runs(t.executed_statuses()), bool(t.correct)) for t in ts]
    for m in RECOVERY_RUNS:
        hit = [ok for r, ok in runs if r >= m]
        out[f"recovery@{m}_samples"] = float(len(hit))
        out[f"recovery@{m}"] = sum(hit) / len(hit) if hit else float("nan")
    reasons = Counter(t.stop_reason for t in all_t)
    for reason, n in reasons.items():
        out[f"stop.{reason}"] = n / len(all_t)
    return out


def tool_call_histogram(trajs: Iterable[Trajectory]) -> dict[int, int]:
    return dict(sorted(Counter(t.tool_calls for t in trajs if t.scored).items()))


def evaluate(trajs: Iterable[Trajectory], k: int | None = None) -> dict[str, float]:
    """Accuracy and behaviour metrics of one benchmark's trajectories, in one flat dict."""
    ts = list(trajs)
    return {**accuracy_metrics(ts, k), **behaviour_metrics(ts)}

"""Answer checking and the verifiable math reward.

Called by the rollout engine (to mark trajectories correct), the distill filters, the evaluate
metrics, and the grpo stage, which passes :func:`math_reward` (or one built by
:func:`make_math_reward` with format penalties) to TRL as a reward function. Reward functions follow
TRL's shape: ``(completions, **kwargs) -> list[float]``, where ``completions`` are strings or chat
messages and the reference answers arrive as the ``answer`` (or ``reference``) column.

Checking: the final answer is the content of the *last* ``\\boxed{...}`` (braces balanced; ``\\fbox``
too). Two answers are equivalent when their normalised strings match, when both are plain numbers of
equal value (exact for integers of any size, 1e-9 relative for decimals), or when math-verify says
so (fractions, LaTeX expressions, sets, intervals, percentages).

What it does not guarantee: math-verify's judgement on exotic LaTeX; a parse that takes longer than
its timeout counts as not equivalent (the timeout only works on the main thread, elsewhere it is off).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)
logging.getLogger("math_verify").setLevel(logging.ERROR)

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUMBER = re.compile(r"^[-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$|^[-+]?\.\d+$")


def all_boxed(text: str | None) -> list[str]:
    """Contents of every complete ``\\boxed{...}`` in ``text``, in order (nested braces kept)."""
    out: list[str] = []
    if not text:
        return out
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            out.append(text[m.end():i - 1].strip())
    return out


def extract_boxed(text: str | None) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces kept), or None."""
    found = all_boxed(text)
    return found[-1] if found else None


def normalize_answer(ans: Any) -> str | None:
    """A canonical string for an answer: strips ``$``, ``\\boxed``, spaces, thousands separators, trailing dots.

    Returns None for a missing or empty answer.
    """
    if ans is None:
        return None
    s = str(ans).strip()
    inner = extract_boxed(s)
    if inner is not None:
        s = inner
    s = s.strip().strip("$").strip()
    # LaTeX spacing commands (\! \, \ ) go; a row break \\ followed by a space must survive.
    s = re.sub(r"(?<!\\)\\[!, ]", "", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\left|\\right", "", s)
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    if _NUMBER.match(s):
        s = s.replace(",", "").lstrip("+")
    return s or None


def _as_number(s: str) -> Decimal | None:
    if not _NUMBER.match(s):
        return None
    try:
        return Decimal(s.replace(",", ""))
    except InvalidOperation:
        return None


def _timeout() -> int | None:
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=65536)
def _parse(s: str) -> tuple[Any, ...]:
    from math_verify import parse

    try:
        return tuple(parse(f"${s}$", parsing_timeout=_timeout()))
    except Exception:  # noqa: BLE001 - an unparseable answer is simply not equivalent
        return ()


def parseable(ans: str | None) -> bool:
    """Whether an answer can be checked at all (a number or something math-verify parses)."""
    s = normalize_answer(ans)
    # math-verify falls back to the raw string when it cannot parse: that alone does not count.
    return s is not None and (_as_number(s) is not None or any(not isinstance(x, str) for x in _parse(s)))


@lru_cache(maxsize=65536)
def is_equivalent(pred: str | None, ref: str | None) -> bool:
    """Whether the predicted answer equals the reference (see the module docstring for the rules)."""
    p, r = normalize_answer(pred), normalize_answer(ref)
    if p is None or r is None:
        return False
    if p == r:
        return True
    pn, rn = _as_number(p), _as_number(r)
    if pn is not None and rn is not None:
        if pn == rn:
            return True
        if pn == pn.to_integral_value() and rn == rn.to_integral_value():
            return False  # integers compare exactly: 105263157894736848 != ...842
        return abs(pn - rn) <= Decimal("1e-9") * max(Decimal(1), abs(rn))
    gold, target = _parse(r), _parse(p)
    if not gold or not target:
        return False
    from math_verify import verify

    try:
        return bool(verify(list(gold), list(target), timeout_seconds=_timeout()))
    except Exception:  # noqa: BLE001
        return False


def _completion_text(c: Any) -> str:
    """A TRL completion: a string, or a list of chat messages (the assistant's content is used)."""
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        return str(c.get("content", ""))
    if isinstance(c, Sequence):
        return "".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in c)
    return str(c)


def score(text: str, reference: str | None, *, no_answer_penalty: float = 0.0,
          unclosed_block_penalty: float = 0.0, multiple_answers_penalty: float = 0.0) -> float:
    """Reward of one completion: 1 if its last boxed answer equals the reference, else 0, minus penalties.

    Penalties (subtracted, so give them as positive numbers) apply to malformed output only: no boxed
    answer; a python block left open; more than one distinct boxed answer.
    """
    from .rollout.codeblocks import has_open_block

    pred = extract_boxed(text)
    reward = 1.0 if pred is not None and is_equivalent(pred, reference) else 0.0
    if pred is None:
        reward -= no_answer_penalty
    if unclosed_block_penalty and has_open_block(text):
        reward -= unclosed_block_penalty
    if multiple_answers_penalty and len({normalize_answer(m) for m in all_boxed(text)}) > 1:
        reward -= multiple_answers_penalty
    return reward


def _references(kwargs: dict[str, Any], n: int) -> list[Any]:
    for key in ("answer", "reference", "solution", "ground_truth"):
        if key in kwargs and kwargs[key] is not None:
            refs = kwargs[key]
            refs = [refs] * n if isinstance(refs, str) else list(refs)
            if len(refs) != n:
                raise ValueError(f"math_reward: {len(refs)} references for {n} completions")
            return refs
    raise ValueError("math_reward needs the reference answers as the 'answer' (or 'reference') column")


def math_reward(completions: Sequence[Any], answer: Any = None, reference: Any = None, **kwargs: Any) -> list[float]:
    """TRL reward function: 1.0 when the last ``\\boxed{}`` answer equals the reference, else 0.0."""
    refs = _references({"answer": answer, "reference": reference, **kwargs}, len(completions))
    return [score(_completion_text(c), None if r is None else str(r)) for c, r in zip(completions, refs, strict=True)]


def grounded_math_reward(completions: Sequence[Any], answer: Any = None, reference: Any = None,
                         grounded: Sequence[Any] | None = None, **kwargs: Any) -> list[float]:
    """:func:`math_reward`, but 0.0 unless the answer is grounded in an interpreter output.

    ``grounded`` is the per-completion column the grpo rollout function returns (TRL hands a rollout's
    extra columns to reward functions as keyword arguments); see ``rollout.metrics.is_grounded``.
    """
    if grounded is None or len(grounded) != len(completions):
        raise ValueError("grounded_math_reward needs the rollout's 'grounded' column, one value per completion")
    base = math_reward(completions, answer=answer, reference=reference, **kwargs)
    return [b if bool(g) else 0.0 for b, g in zip(base, grounded, strict=True)]


def make_math_reward(*, no_answer_penalty: float = 0.0, unclosed_block_penalty: float = 0.0,
                     multiple_answers_penalty: float = 0.0) -> Callable[..., list[float]]:
    """A :func:`math_reward` with format penalties (TRL logs it under the name ``math_reward``)."""

    def reward(completions: Sequence[Any], answer: Any = None, reference: Any = None, **kwargs: Any) -> list[float]:
        refs = _references({"answer": answer, "reference": reference, **kwargs}, len(completions))
        return [
            score(_completion_text(c), None if r is None else str(r), no_answer_penalty=no_answer_penalty,
                  unclosed_block_penalty=unclosed_block_penalty, multiple_answers_penalty=multiple_answers_penalty)
            for c, r in zip(completions, refs, strict=True)
        ]

    reward.__name__ = "math_reward"
    return reward

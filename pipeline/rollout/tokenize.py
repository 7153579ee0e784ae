"""Token ids and the 1/0 model-token mask of a trajectory, for SFT labels and GRPO's ``env_mask``.

Called by the rollout engine (prompt ids, interpreter ids while generating), by the sft stage (labels
= ids where the mask is 1, -100 elsewhere) and by the grpo stage's TRL ``rollout_func``.

Each segment is tokenised on its own and the pieces are concatenated; the prompt is the tokenizer's
chat template rendered with ``add_generation_prompt=True``. The transformers and vLLM backends feed
the model exactly this concatenation while generating, so the spans are exact by construction: no
offset mapping, no guessing where an ```output block starts. When a trajectory carries the sampled
``token_ids`` of its segments (in memory, from the engine) they are used as they are.

When the model ended its turn itself (stop reason ``answer``/``no_answer``) the template's end-of-turn
token (``<|im_end|>``, ``<|eot_id|>``, ...) is appended as a model token, so SFT teaches the model to stop.

What it does not guarantee: that the concatenation equals ``tokenizer(prompt + completion)`` (BPE may
merge across a segment boundary differently); tokenizers that add a prefix space to every piece
(SentencePiece without ``add_prefix_space=False``) are not supported.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ..errors import StageError
from .trajectory import Trajectory

ENDED_TURN = ("answer", "no_answer")
_SENTINEL = "\u2063CODEGROUND\u2063"


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt text: the chat template with the assistant turn opened."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "?")
        raise StageError(f"tokenizer {name!r} has no chat template; use an instruct/chat model or set tokenizer.chat_template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_text(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    return encode_text(tokenizer, render_prompt(tokenizer, messages))


def turn_end_text(tokenizer: Any) -> str:
    """What the chat template writes right after an assistant message's content, up to its first special token."""
    return _turn_end_cached(tokenizer)


@lru_cache(maxsize=32)
def _turn_end_cached(tokenizer: Any) -> str:
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
    except Exception:  # noqa: BLE001 - templates that refuse this shape fall back to eos
        text = ""
    if _SENTINEL in text:
        suffix = text.split(_SENTINEL, 1)[1]
        specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t and t in suffix]
        if specials:
            first = min(specials, key=lambda t: suffix.index(t))
            return suffix[: suffix.index(first) + len(first)].lstrip(" ") if suffix.strip() else ""
        if suffix.strip():
            return suffix.rstrip()
    return tokenizer.eos_token or ""


def turn_end_ids(tokenizer: Any) -> list[int]:
    return encode_text(tokenizer, turn_end_text(tokenizer))


def encode_trajectory(tokenizer: Any, traj: Trajectory, max_length: int | None = None, *,
                      use_token_ids: bool = True, add_turn_end: bool | None = None) -> dict[str, Any]:
    """Prompt ids, completion ids and the completion mask (1 = model token, 0 = interpreter token).

    ``max_length`` caps the *completion* (model + interpreter tokens; TRL's ``max_completion_length``);
    longer completions are cut and ``truncated`` is True. Also returns ``input_ids`` and ``labels``
    (-100 on the prompt and on interpreter tokens) for SFT.
    """
    p_ids = prompt_ids(tokenizer, traj.prompt)
    ids: list[int] = []
    mask: list[int] = []
    for seg in traj.segments:
        seg_ids = seg.token_ids if (use_token_ids and seg.token_ids is not None) else encode_text(tokenizer, seg.text)
        ids.extend(seg_ids)
        mask.extend([1 if seg.role == "model" else 0] * len(seg_ids))
    if add_turn_end is None:
        add_turn_end = traj.stop_reason in ENDED_TURN
    if add_turn_end:
        end = turn_end_ids(tokenizer)
        ids.extend(end)
        mask.extend([1] * len(end))
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, mask = ids[:max_length], mask[:max_length]
    labels = [-100] * len(p_ids) + [t if m else -100 for t, m in zip(ids, mask, strict=True)]
    return {
        "prompt_ids": p_ids,
        "completion_ids": ids,
        "completion_mask": mask,
        "input_ids": p_ids + ids,
        "labels": labels,
        "truncated": truncated,
    }

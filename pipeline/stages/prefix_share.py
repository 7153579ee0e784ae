"""Shared-prefix scoring for GRPO: the few-shot prefix every prompt starts with is run once per batch.

Called by :mod:`.trainers` (our subclasses of TRL's ``GRPOTrainer`` and ``SFTTrainer``). TRL scores a
micro-batch by running the whole left-padded ``prompt + completion`` of every sequence through the model.
Our prompts all start with the same system prompt and worked examples (about 370 of the ~460 tokens of a
quickstart sequence), so most of that work is the same prefix again and again. Here the longest prefix
that every prompt of the batch shares is run once (batch 1, with gradients), its key/value cache is
repeated for the batch, and only the rest — each prompt's own tail and its completion — is run on top of
it. The gradient is the same (the prefix's contribution is summed over the rows by autograd); the
forward/backward work per micro-batch of 4 falls from 4 x 460 to 370 + 4 x 90 token positions.

Positions differ from TRL's own path in one way, on purpose: TRL's left padding shifts the position ids of
shorter prompts by their padding (the model generated them at positions 0..n), here every token sits at
the position it was generated at.

What it does not cover (TRL's own path runs instead): multimodal inputs, MoE auxiliary losses, gradient
checkpointing (its recomputation would append to the cache twice), caches with sliding-window layers,
and batches whose shared prefix is shorter than ``MIN_PREFIX`` tokens (nothing to gain).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..rollout.models import cache_kwarg, output_cache

log = logging.getLogger(__name__)

MIN_PREFIX = 16  # shorter shared prefixes are not worth a second forward call


@dataclass
class Layout:
    """One batch rearranged as a shared prefix plus right-padded per-row suffixes."""

    prefix: Any  # (1, c) token ids every row starts with
    suffix_ids: Any  # (B, S): each row's prompt tail then its completion, right-padded
    suffix_mask: Any  # (B, S) attention mask of the suffix (1 = real token)
    shift_labels: Any  # (B, S): the next token a suffix position predicts when it is a completion token, else -100
    starts: Any  # (B,): suffix position of each row's first completion token
    width: int  # logits_to_keep: completion tokens per row


def _first_difference(rows: Any) -> int:
    """First column where the rows of ``rows`` (B, W) are not all equal; W when they agree throughout."""
    differ = (~(rows == rows[:1]).all(dim=0)).nonzero()
    return int(differ[0]) if differ.numel() else rows.size(1)


def _repeat_cache(kv: list[tuple[Any, Any]], n: int) -> Any:
    """A fresh cache holding the prefix's (key, value) for ``n`` rows (views: autograd sums them back)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv])


def shared_prefix_length(prompt_ids: Any, prompt_mask: Any) -> int:
    """Tokens at the start of every (left-padded) prompt that all rows share, leaving each row >= 1 own token.

    The last prompt token must stay in the suffix: its output predicts the first completion token.
    """
    import torch

    lengths = prompt_mask.sum(dim=1)
    shortest = int(lengths.min())
    if shortest <= 1 or prompt_ids.size(0) == 0:
        return 0
    pad = prompt_ids.size(1) - lengths  # left padding of each row
    cols = torch.arange(shortest - 1, device=prompt_ids.device)
    aligned = prompt_ids.gather(1, pad[:, None] + cols[None, :])  # each row's first shortest-1 real tokens
    return _first_difference(aligned)


def build_layout(input_ids: Any, attention_mask: Any, logits_to_keep: int, c: int) -> Layout:
    """Split TRL's ``cat(left-padded prompt, right-padded completion)`` batch at shared prefix length ``c``."""
    import torch

    total = input_ids.size(1)
    p = total - logits_to_keep
    prompt_mask = attention_mask[:, :p]
    lengths = prompt_mask.sum(dim=1)
    pad = p - lengths
    tails = lengths - c  # prompt tokens of each row after the shared prefix (>= 1)
    width = int(tails.max()) + logits_to_keep
    first = int(pad[0])
    prefix = input_ids[:1, first: first + c]
    # Gather each row's tokens from its first non-shared prompt token on; positions past the row's end pad.
    j = torch.arange(width, device=input_ids.device)[None, :]
    src = (pad + c)[:, None] + j
    valid = j < (tails[:, None] + logits_to_keep)
    src = torch.where(valid, src, torch.zeros_like(src))
    suffix_ids = torch.where(valid, input_ids.gather(1, src), torch.zeros_like(src))
    suffix_mask = torch.where(valid, attention_mask.gather(1, src), torch.zeros_like(src))
    # Position k predicts the token at k+1; it counts when that token is a completion token that is attended.
    starts = tails
    nxt = j + 1
    is_completion = (nxt >= starts[:, None]) & (nxt < starts[:, None] + logits_to_keep)
    nxt_ids = torch.cat([suffix_ids[:, 1:], torch.zeros_like(suffix_ids[:, :1])], dim=1)
    nxt_mask = torch.cat([suffix_mask[:, 1:], torch.zeros_like(suffix_mask[:, :1])], dim=1)
    shift_labels = torch.where(is_completion & (nxt_mask == 1), nxt_ids, torch.full_like(nxt_ids, -100))
    return Layout(prefix, suffix_ids, suffix_mask, shift_labels, starts, logits_to_keep)


def gather_completion(per_position: Any, starts: Any, width: int) -> Any:
    """(B, S) values at suffix positions -> (B, width) aligned with the completion tokens that start at ``starts``."""
    import torch

    cols = (starts - 1)[:, None] + torch.arange(width, device=per_position.device)[None, :]
    return per_position.gather(1, cols)


def checkpointing(model: Any) -> bool:
    """Whether activation (gradient) checkpointing is on; the attribute was renamed in transformers 5."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def _prefix_cache(model: Any, prefix: Any) -> list[tuple[Any, Any]] | None:
    """Per-layer (key, value) of the prefix, with gradients; None when the cache is not plain full attention."""
    out = model(input_ids=prefix, use_cache=True, logits_to_keep=1)
    cache = output_cache(out)
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def score(model: Any, input_ids: Any, attention_mask: Any, logits_to_keep: int, batch_size: int | None,
          compute_entropy: bool, autocast: Any = None) -> tuple[Any, Any] | None:
    """Per-token log-probs (and entropies) of the completion tokens, or None when TRL's path must run.

    Same contract as ``GRPOTrainer._get_per_token_logps_and_entropies`` for text-only batches; ``model``
    carries TRL's fused LM head (``fused_lm_head=True`` with ``shift_labels``); ``autocast`` makes the
    context each forward runs in (the accelerator's).
    """
    from contextlib import nullcontext

    import torch

    autocast = autocast or nullcontext
    p = input_ids.size(1) - logits_to_keep
    c = shared_prefix_length(input_ids[:, :p], attention_mask[:, :p])
    if c < MIN_PREFIX or checkpointing(model):
        return None
    layout = build_layout(input_ids, attention_mask, logits_to_keep, c)
    with autocast():
        kv = _prefix_cache(model, layout.prefix)
    if kv is None:
        return None
    key = cache_kwarg()
    b = input_ids.size(0)
    step = batch_size or b
    width = layout.suffix_ids.size(1)
    logps, entropies = [], []
    for lo in range(0, b, step):
        hi = min(lo + step, b)
        n = hi - lo
        cache = _repeat_cache(kv, n)
        mask = torch.cat([torch.ones(n, c, dtype=layout.suffix_mask.dtype, device=input_ids.device),
                          layout.suffix_mask[lo:hi]], dim=1)
        positions = torch.arange(c, c + width, device=input_ids.device)[None, :].expand(n, -1)
        with autocast():
            out = model(input_ids=layout.suffix_ids[lo:hi], attention_mask=mask, position_ids=positions,
                        shift_labels=layout.shift_labels[lo:hi], fused_lm_head=True, **{key: cache})
        starts = layout.starts[lo:hi]
        logps.append(gather_completion(out.log_probs, starts, logits_to_keep))
        if compute_entropy:
            entropies.append(gather_completion(out.entropy, starts, logits_to_keep))
    return torch.cat(logps, dim=0), (torch.cat(entropies, dim=0) if compute_entropy else None)


def right_padded_prefix(input_ids: Any, attention_mask: Any, labels: Any) -> int:
    """Shared prefix of a right-padded SFT batch that holds no label (so nothing trained is inside it)."""
    import torch

    if input_ids.size(0) < 2:
        return 0
    lengths = attention_mask.sum(dim=1)
    cols = torch.arange(input_ids.size(1), device=input_ids.device)
    if not bool((attention_mask == (cols[None, :] < lengths[:, None]).to(attention_mask.dtype)).all()):
        return 0  # not right-padded: leave it to TRL
    shortest = int(lengths.min())
    c = _first_difference(input_ids[:, :shortest])
    labelled = (labels != -100).any(dim=0).nonzero()
    if labelled.numel():
        c = min(c, int(labelled[0]) - 1)  # the hidden state before the first label must be computed here
    return max(0, min(c, shortest - 1))


class SharedPrefixModel:
    """Stands in for the model in ``SFTTrainer.compute_loss``: a ``fused_lm_head=True`` call on a right-padded
    batch runs the shared prefix once and returns the fused outputs in TRL's shapes (``(B, T-1)``, zeros and
    ``label_mask=False`` inside the prefix, where every label is -100); any other call goes to the model."""

    def __init__(self, model: Any):
        self.model = model
        self.used = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, *args: Any, **kw: Any) -> Any:
        out = None
        if not args and kw.get("fused_lm_head") and set(kw) <= {"input_ids", "attention_mask", "labels", "use_cache",
                                                                 "fused_lm_head", "num_items_in_batch"}:
            out = self._shared(kw["input_ids"], kw.get("attention_mask"), kw.get("labels"))
        return out if out is not None else self.model(*args, **kw)

    def _shared(self, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
        import torch

        if attention_mask is None or labels is None or checkpointing(self.model):
            return None
        c = right_padded_prefix(input_ids, attention_mask, labels)
        if c < MIN_PREFIX:
            return None
        kv = _prefix_cache(self.model, input_ids[:1, :c])
        if kv is None:
            return None
        b, t = input_ids.shape
        cache = _repeat_cache(kv, b)
        shift = torch.cat([labels[:, c + 1:], torch.full_like(labels[:, :1], -100)], dim=1)
        positions = torch.arange(c, t, device=input_ids.device)[None, :].expand(b, -1)
        out = self.model(input_ids=input_ids[:, c:], attention_mask=attention_mask, position_ids=positions,
                         shift_labels=shift, fused_lm_head=True, **{cache_kwarg(): cache})
        for name in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask"):
            value = getattr(out, name, None)
            if value is not None:
                out[name] = torch.cat([value.new_zeros((b, c)), value[:, :-1]], dim=1)
        self.used += 1
        return out

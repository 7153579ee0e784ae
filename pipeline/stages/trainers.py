"""TRL's trainers with exact shortcuts that matter on CPU: :mod:`.grpo` and :mod:`.sft` build them.

GRPOTrainer (:func:`trainer_class`):

1. **Shared-prefix scoring** (:mod:`.prefix_share`): the worked examples every prompt starts with are run
   once per micro-batch instead of once per sequence.
2. **Zero-advantage skip**: a sequence whose advantage is zero (every sample of its group got the same
   reward — early on, often all wrong) contributes exactly nothing to the gradient when there is no KL
   term, no entropy bonus and no MoE auxiliary loss: every loss type TRL offers is then a multiple of the
   advantage. For the loss types normalised over the whole generation batch (dapo, the default; cispo;
   vespo) such sequences are dropped from the micro-batch before the forward pass; for the others only a
   micro-batch with no non-zero advantage is skipped. A fully skipped micro-batch writes zero gradients,
   so the optimizer (Adam's moments, weight decay, clipping) sees what TRL's own path gives it. DAPO
   (arXiv 2503.14476) filters such groups out for the same reason ("dynamic sampling").

SFTTrainer (:func:`sft_trainer_class`): the same shared-prefix forward for right-padded batches whose
rows start with the same prompt tokens (:class:`.prefix_share.SharedPrefixModel`); TRL computes the loss
and its metrics from the outputs as usual.

All fall back to TRL's path where they would not be exact: multimodal batches, gradient checkpointing,
several processes (DDP needs every rank to run the same forwards), a KL term or an entropy bonus.
What it does not guarantee: bit-identical floats to TRL's path (sums run in another order; the tests
compare log-probs and gradients within float tolerance).
"""

from __future__ import annotations

import logging
from typing import Any

from .prefix_share import SharedPrefixModel, score

log = logging.getLogger(__name__)


def zero_loss(model: Any) -> Any:
    """A loss of 0 whose backward writes zero gradients to every trainable parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    return sum((p * 0).sum() for p in params)


# Loss types whose micro-batch loss is a sum of per-sequence terms over a normaliser fixed for the whole
# generation batch (``num_items_in_batch``): dropping a zero-advantage sequence changes nothing. The others
# (grpo, bnpo, dr_grpo, luspo, sapo) average over the micro-batch, so only an all-zero micro-batch is skipped.
ROW_SEPARABLE = frozenset({"dapo", "cispo", "vespo"})


def nonzero_rows(advantages: Any) -> Any:
    """Bool (B,): rows with any non-zero advantage (advantages are (B,) or (B, T))."""
    return advantages != 0 if advantages.dim() == 1 else (advantages != 0).any(dim=-1)


def select_rows(inputs: dict[str, Any], keep: Any) -> dict[str, Any]:
    """``inputs`` with only the rows ``keep`` marks, for every per-row tensor; scalars and the rest unchanged."""
    import torch

    b = keep.numel()
    return {k: v[keep] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.size(0) == b else v
            for k, v in inputs.items()}


def trainer_class(base: Any) -> Any:
    """``base`` (TRL's GRPOTrainer) with shared-prefix scoring and the zero-advantage skip."""

    class CodegroundGRPOTrainer(base):  # type: ignore[misc, valid-type]
        skipped_rows = 0  # sequences whose forward/backward the zero-advantage skip saved
        prefix_batches = 0  # micro-batches scored with the shared-prefix forward

        def _single_process(self, model: Any) -> bool:
            return self.accelerator.num_processes == 1 and self.accelerator.unwrap_model(model) is model

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            # (attributes read with getattr: they name TRL 1.16's; where one is missing, assume the worst)
            exact = (getattr(self, "beta", 1.0) == 0.0 and not getattr(self, "_entropy_bonus_enabled", True)
                     and not getattr(self, "aux_loss_enabled", True) and not return_outputs
                     and self._single_process(model) and inputs.get("pixel_values") is None)
            if exact:
                keep = nonzero_rows(inputs["advantages"])
                if not bool(keep.any()):
                    self.skipped_rows += int(keep.numel())
                    return zero_loss(model)
                if not bool(keep.all()) and getattr(self, "loss_type", None) in ROW_SEPARABLE:
                    self.skipped_rows += int((~keep).sum())
                    inputs = select_rows(inputs, keep)
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

        def _get_per_token_logps_and_entropies(self, model: Any, input_ids: Any, attention_mask: Any,
                                               logits_to_keep: int, batch_size: int | None = None,
                                               compute_entropy: bool = False, compute_aux_loss: bool = False,
                                               **extra: Any) -> Any:
            if self._single_process(model) and not compute_aux_loss and all(v is None for v in extra.values()):
                got = score(model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy,
                            self.accelerator.autocast)
                if got is not None:
                    self.prefix_batches += 1
                    if not getattr(self, "_told_prefix", False):
                        self._told_prefix = True
                        log.info("grpo: scoring with the shared prompt prefix run once per micro-batch")
                    return got[0], got[1], None
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **extra)

    return CodegroundGRPOTrainer


def sft_trainer_class(base: Any) -> Any:
    """``base`` (TRL's SFTTrainer) with the shared prompt prefix run once per micro-batch."""

    class CodegroundSFTTrainer(base):  # type: ignore[misc, valid-type]
        prefix_batches = 0  # micro-batches scored with the shared-prefix forward

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            single = self.accelerator.num_processes == 1 and self.accelerator.unwrap_model(model) is model
            plain = (single and not return_outputs and not getattr(self, "aux_loss_enabled", True)
                     and getattr(self, "compute_loss_func", None) is None
                     and getattr(self, "label_smoother", None) is None
                     and getattr(self.args, "loss_type", "nll") == "nll")
            if not plain:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            proxy = SharedPrefixModel(model)
            loss = super().compute_loss(proxy, inputs, num_items_in_batch=num_items_in_batch)
            self.prefix_batches += proxy.used
            return loss

    return CodegroundSFTTrainer

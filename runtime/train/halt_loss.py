"""The halt head's loss term: at each target position, does the next token end the turn.

Position t of the halt logits `[B, T-1]` (the halt head on the final normed hidden state of token t)
predicts whether token t + 1 ends the turn: eos, or the tool-call end token (where a decoder stops
to wait for the tool). Its target is 1 there and 0 at every other target position (`loss_mask` of
token t + 1); the term is the binary cross-entropy averaged over those positions, 0 with a zero
gradient when a batch has none. The balance alert's probe measures its gradient at the halt logits,
beside the token terms' at the vocabulary logits (length_kd among them: the seeds warn the two can
pull against each other).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import grad_norms_at, masked_mean


def stop_ids(special: dict[str, int]) -> list[int]:
    return [special["eos"]] + ([special["tool_call_end"]] if "tool_call_end" in special else [])


def targets(batch: dict[str, Tensor], special: dict[str, int]) -> tuple[Tensor, Tensor]:
    """(labels, mask) `[B, T-1]`: 1 where the next token ends the turn, over target positions."""
    nxt = batch["input_ids"][:, 1:]
    labels = torch.isin(nxt, torch.tensor(stop_ids(special), device=nxt.device)).float()
    return labels, batch["loss_mask"][:, 1:] > 0


def term(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    return masked_mean(F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none"), mask)


def grad_norm(logits: Tensor, labels: Tensor, mask: Tensor, weight: float) -> float:
    return grad_norms_at(logits, lambda x: {"halt": term(x, labels, mask)}, {"halt": weight})["halt"]

"""A judge's loss terms, from its verdict head's outputs at each row's verdict position.

The batch's `judge` vectors are runtime/data/judge.py's: `[position, preference, teacher preference,
clause labels x C, teacher clauses x C]`, -1 where not given. The head's outputs `[B, 1 + C]` are the
verdict score s (log-odds that response A beats B) and one logit per clause (log-odds that the
response violates it), read at the row's last token. Every term is a mean over the values it covers
and is 0 with a zero gradient when a batch has none (a batch of clause rows has no pairwise term):

- pairwise: over the rows of a preference pair (both orders), with y = 1 when A is the chosen response:
  bradley_terry `-[y log sigmoid(s) + (1 - y) log sigmoid(-s)]`; margin `max(0, margin - (2y - 1) s)`.
- clauses: binary cross-entropy of each clause logit against its 0/1 label.
- verdict_kd: binary cross-entropy of the score and clause logits against the teacher's probabilities,
  where the row gives them.

A row cut by the curriculum before its verdict position (a stage's seq_len shorter than the row) is
left out of every term in that stage.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import grad_norms_at, masked_mean

TERMS = ("pairwise", "clauses", "verdict_kd")


def read_positions(h: Tensor, vectors: Tensor) -> tuple[Tensor, Tensor]:
    """The hidden states `[B, d]` at each row's verdict position, and which rows have it within `h`'s length."""
    pos = vectors[:, 0].long()
    valid = (pos >= 0) & (pos < h.shape[1])
    return h[torch.arange(h.shape[0], device=h.device), pos.clamp(0, h.shape[1] - 1)], valid


def terms(out: Tensor, vectors: Tensor, valid: Tensor, losses: dict[str, Any], judge: Any) -> dict[str, Tensor]:
    """Raw (unweighted) value of each configured judge term, from the head's outputs `out` `[B, 1 + C]`."""
    out = out.float()
    c = out.shape[1] - 1
    score, clause_logits = out[:, 0], out[:, 1:]
    result: dict[str, Tensor] = {}
    if "pairwise" in losses:
        y = vectors[:, 1]
        mask = valid & (y >= 0)
        yc = y.clamp(0, 1)
        if judge.objective == "margin":
            values = torch.relu(judge.margin - (2 * yc - 1) * score)
        else:
            values = F.binary_cross_entropy_with_logits(score, yc, reduction="none")
        result["pairwise"] = masked_mean(values, mask)
    if "clauses" in losses:
        labels = vectors[:, 3:3 + c]
        mask = valid[:, None] & (labels >= 0)
        result["clauses"] = masked_mean(F.binary_cross_entropy_with_logits(clause_logits, labels.clamp(0, 1), reduction="none"), mask)
    if "verdict_kd" in losses:
        targets = torch.cat([vectors[:, 2:3], vectors[:, 3 + c:3 + 2 * c]], dim=1)
        mask = valid[:, None] & (targets >= 0)
        result["verdict_kd"] = masked_mean(F.binary_cross_entropy_with_logits(out, targets.clamp(0, 1), reduction="none"), mask)
    return result


def grad_norms(out: Tensor, vectors: Tensor, valid: Tensor, losses: dict[str, Any], judge: Any,
               weights: dict[str, float]) -> dict[str, float]:
    """Norm of each weighted term's gradient with respect to the head's outputs (the balance alert's probe)."""
    return grad_norms_at(out, lambda x: terms(x, vectors, valid, losses, judge), weights)

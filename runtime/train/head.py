"""The training loss computed from the final hidden states a chunk of positions at a time.

`LossHead` is what the train and qat jobs pass to `Student.forward(..., head=...)`: the model
calls it with its final normed hidden states `h` `[B, T, d]` and its output weight `W` `[V, d]`
(inside forward, where FSDP2 has the root's parameters gathered). For each chunk of
`training.compute.loss_chunk` prediction positions it computes the chunk's logits `h_c W^T`,
reduces them to the few values per position that the loss terms read
(`losses.position_stats`) and frees them; the chunk is recomputed in the backward pass
(`torch.utils.checkpoint`), so at most one chunk's `[B, chunk, V]` logits exist at a time and
autograd keeps only `h`. The terms are then `losses.terms` of the concatenated values: the same
definitions and values (within float rounding) as `losses.compute` on whole logits, which is
what `loss_chunk: 0` runs (one chunk, kept for the backward, no recomputation).

The per-term gradient-norm probe of the balance alert (`probe`) measures each weighted term's
gradient with respect to the logits, as before, without whole logits either: the gradient of
each term with respect to the per-position values (small) is pulled back through each chunk's
logits in turn, and the squared norms add up over chunks (the logits of different positions
are different variables).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from . import halt_loss, judge_losses, losses


class LossHead:
    def __init__(self, batch: dict[str, Tensor], losses_cfg: dict[str, Any], special: dict[str, int], chunk: int,
                 *, accuracy: bool = False, probe: dict[str, float] | None = None, judge: Any = None) -> None:
        """`chunk`: positions per chunk (0: all at once, nothing recomputed). `accuracy`: also return the
        argmax (`argmax`, `[B, T-1]`). `probe`: the terms' weights; also return their gradient norms.
        `judge`: a judge's settings (JudgeP): its terms read the verdict head (runtime/train/judge_losses.py)."""
        self.judge = judge
        self.judge_cfg = {k: v for k, v in losses_cfg.items() if k in judge_losses.TERMS}
        self.halt = "halt" in losses_cfg  # the halt head's term (runtime/train/halt_loss.py)
        losses_cfg = {k: v for k, v in losses_cfg.items() if k not in judge_losses.TERMS and k != "halt"}
        self.tokens = bool(losses_cfg) or (accuracy and not self.judge_cfg)  # token-level terms read the logits
        self.batch, self.cfg, self.special, self.chunk = batch, losses_cfg, special, chunk
        self.need = losses.needed(losses_cfg, batch, accuracy)
        self.at = losses.aligned(batch)
        self.probe = probe

    def _chunks(self, n: int) -> list[slice]:
        size = self.chunk or n
        return [slice(a, min(n, a + size)) for a in range(0, n, size)]

    def _stats(self, h: Tensor, weight: Tensor, part: slice) -> tuple[Tensor, ...]:
        at = {k: v[:, part] for k, v in self.at.items()}
        stats = losses.position_stats(F.linear(h, weight), at, self.need, self.cfg, self.special)
        return tuple(stats[k] for k in sorted(stats))

    def __call__(self, h: Tensor, weight: Tensor, judge_head: Any = None, halt_head: Any = None) -> dict[str, Any]:
        out: dict[str, Any] = {"terms": {}}
        if self.tokens:
            out = self._tokens(h, weight)
        if self.halt:
            if halt_head is None:
                raise ValueError("the halt term needs the model's halt head (architecture halt_head)")
            logits = halt_head(h[:, :-1]).squeeze(-1)  # position t: does token t + 1 end the turn
            labels, mask = halt_loss.targets(self.batch, self.special)
            out["terms"]["halt"] = halt_loss.term(logits, labels, mask)
            if self.probe is not None:
                out.setdefault("grad_norm_by_loss", {})["halt"] = halt_loss.grad_norm(logits, labels, mask,
                                                                                       self.probe["halt"])
        if self.judge_cfg:
            if judge_head is None:
                raise ValueError("the judge's loss terms need the model's verdict head (architecture judge_outputs > 0)")
            at, valid = judge_losses.read_positions(h, self.batch["judge"])
            scores = judge_head(at)
            out["terms"].update(judge_losses.terms(scores, self.batch["judge"], valid, self.judge_cfg, self.judge))
            out["judge"] = scores.detach().float()
            if self.probe is not None:
                out.setdefault("grad_norm_by_loss", {}).update(judge_losses.grad_norms(
                    scores, self.batch["judge"], valid, self.judge_cfg, self.judge, self.probe))
        return out

    def _tokens(self, h: Tensor, weight: Tensor) -> dict[str, Any]:
        losses.check(self.batch, self.cfg, weight.shape[0])
        h = h[:, :-1]  # the last position predicts nothing
        recompute = self.chunk > 0 and torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
        parts = []
        for part in self._chunks(h.shape[1]):
            if recompute:
                parts.append(checkpoint(self._stats, h[:, part], weight, part, use_reentrant=False))
            else:
                parts.append(self._stats(h[:, part], weight, part))
        names = sorted(self.need)  # the keys position_stats returns, in _stats's order
        stats = {name: torch.cat([p[i] for p in parts], dim=1) for i, name in enumerate(names)}
        out: dict[str, Any] = {"terms": losses.terms(stats, self.batch, self.cfg, self.special)}
        if "argmax" in stats:
            out["argmax"] = stats["argmax"]
        if self.probe is not None:
            out["grad_norm_by_loss"] = self._grad_norms(h.detach(), weight.detach(), stats)
        return out

    def _grad_norms(self, h: Tensor, weight: Tensor, stats: dict[str, Tensor]) -> dict[str, float]:
        """Norm of each weighted term's gradient with respect to the logits, a chunk of logits at a time."""
        assert self.probe is not None
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_() for k, v in stats.items() if v.is_floating_point()}
            terms = losses.terms({**stats, **leaves}, self.batch, self.cfg, self.special)
            names = sorted(leaves)
            by_term: dict[str, tuple[Tensor | None, ...]] = {}
            for name, value in terms.items():
                weighted = self.probe[name] * value
                by_term[name] = (torch.autograd.grad(weighted, [leaves[k] for k in names], retain_graph=True,
                                                     allow_unused=True) if weighted.requires_grad else (None,) * len(names))
            squares = dict.fromkeys(terms, 0.0)
            for part in self._chunks(h.shape[1]):
                logits = F.linear(h[:, part], weight).detach().requires_grad_()
                at = {k: v[:, part] for k, v in self.at.items()}
                chunk_stats = losses.position_stats(logits, at, self.need, self.cfg, self.special)
                for name, grads in by_term.items():
                    pairs = [(chunk_stats[k], g[:, part]) for k, g in zip(names, grads) if g is not None]
                    if not pairs:
                        continue
                    (grad,) = torch.autograd.grad([p[0] for p in pairs], logits, [p[1] for p in pairs],
                                                  retain_graph=True, allow_unused=True)
                    if grad is not None:
                        squares[name] += float(grad.float().pow(2).sum())
        return {name: math.sqrt(value) for name, value in squares.items()}

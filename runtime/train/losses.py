"""Every loss term of `training.losses`, as pure functions of student logits and a batch.

Conventions: `logits[:, t]` predicts token `t + 1`; dataset masks mark target tokens, so a
term at prediction position t uses `mask[:, t + 1]`; the teacher's top-k at position t were
computed the same way. Every term is a mean over the positions (or samples) it covers and is
0 (with a zero gradient) when a batch has none. Weights are applied by the trainer.

- kl: KL(teacher || student) over the teacher's top-k ids, both at temperature tau (the
  teacher renormalised over its top-k, the student's full-vocabulary log-probs gathered at
  those ids), times tau^2, over target positions.
- ce_teacher: cross-entropy on the teacher's argmax token, over target positions.
- ce_ground_truth / tool_name / json_args / integration: cross-entropy on the data's next
  token over target / tool-name / JSON-argument / integration positions.
- length_kd: expected length within the target window under each model's end-of-sequence
  hazard (L = sum_t prod_{u<t} (1 - p_eos(u))); the relative excess r = (L_s - L_t) / L_t
  costs slope * max(0, r - hinge). Samples whose required fields are complete (the student's
  argmax equals the data on every JSON-argument and integration token) are exempt.
- early_tool: cross-entropy on the tool-call tokens (`<tool_call>` .. `</tool_call>`) that lie
  within the first `within_tokens` target tokens, only on samples that must call a tool.

How they are computed: every term reads only a few values per prediction position of the
student's fp32 logits (the logsumexp, the logit of the data's next token, of the teacher's ids,
of eos, the argmax, the sparse-tail KL). `position_stats` reduces logits to those values and
`terms` computes every term from them, so the logits can be produced, reduced and freed a
chunk of positions at a time (runtime/train/head.py) with the same values as from whole logits
(`compute`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .sparse_kl import kl_sparse_tail_positions, masked_position_mean

SPAN_TERMS = {"tool_name": "tool_name_mask", "json_args": "json_args_mask", "integration": "integration_mask"}
ORDER = ("kl", "ce_teacher", "ce_ground_truth", "tool_name", "json_args", "integration", "length_kd", "early_tool")
CE_TERMS = frozenset({"ce_ground_truth", "early_tool", *SPAN_TERMS})


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def grad_norms_at(outputs: Tensor, terms_of: Any, weights: dict[str, float]) -> dict[str, float]:
    """Norm of each weighted term's gradient with respect to `outputs` (a head's, detached here): the balance
    alert's probe for terms that read a head rather than the vocabulary logits. `terms_of(x)` -> {name: value}."""
    with torch.enable_grad():
        leaf = outputs.detach().float().requires_grad_()
        norms = {}
        for name, value in terms_of(leaf).items():
            weighted = weights[name] * value
            grad = torch.autograd.grad(weighted, leaf, allow_unused=True)[0] if weighted.requires_grad else None
            norms[name] = float(grad.norm()) if grad is not None else 0.0
    return norms


def sparse_kl(losses: dict[str, Any], batch: dict[str, Tensor]) -> bool:
    """kl against an HTTP teacher's top-k logprobs with the tail (sparse targets), not dense top-k logits."""
    return "kl" in losses and "kd_mask" in batch


def needed(losses: dict[str, Any], batch: dict[str, Tensor], accuracy: bool = False) -> frozenset[str]:
    """The per-position values the configured terms read (`accuracy`: the argmax too)."""
    need = {"lse"}
    if CE_TERMS & losses.keys():
        need.add("z_target")
    if "kl" in losses:
        need |= {"kl_sparse"} if sparse_kl(losses, batch) else {"z_topk", "lse_tau"}
    if "ce_teacher" in losses:
        need.add("z_teacher")
    if "length_kd" in losses:
        need |= {"z_eos", "argmax"}
    if accuracy:
        need.add("argmax")
    return frozenset(need)


def aligned(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The targets of each prediction position t (token t + 1 and the teacher's top-k at t), `[B, T-1, ...]`."""
    out = {"next": batch["input_ids"][:, 1:]}
    for name in ("topk_ids", "topk_logprobs", "topk_log_tail"):
        if name in batch:
            out[name] = batch[name][:, :-1]
    return out


def position_stats(logits: Tensor, at: dict[str, Tensor], need: frozenset[str], losses: dict[str, Any],
                   special: dict[str, int]) -> dict[str, Tensor]:
    """The values of `need` at each position of `logits` `[B, n, V]` (float32, float64 kept), whose targets
    are `at` (`aligned`, cut to the same n positions)."""
    z = logits if logits.dtype == torch.float64 else logits.float()
    out: dict[str, Tensor] = {"lse": torch.logsumexp(z, dim=-1)}
    if "z_target" in need:
        out["z_target"] = z.gather(-1, at["next"].unsqueeze(-1)).squeeze(-1)
    if "z_teacher" in need:
        out["z_teacher"] = z.gather(-1, at["topk_ids"][..., :1]).squeeze(-1)
    if "z_topk" in need:
        out["z_topk"] = z.gather(-1, at["topk_ids"])
        out["lse_tau"] = torch.logsumexp(z / losses["kl"]["temperature"], dim=-1)
    if "kl_sparse" in need:
        out["kl_sparse"] = kl_sparse_tail_positions(z, at["topk_ids"], at["topk_logprobs"], at.get("topk_log_tail"))
    if "z_eos" in need:
        out["z_eos"] = z[..., special["eos"]]
    if "argmax" in need:
        out["argmax"] = z.detach().argmax(-1)
    return out


def _expected_length(log_survive: Tensor, mask: Tensor) -> Tensor:
    """sum over masked t of prod_{u<t, u masked} (1 - hazard_u), from log(1 - hazard)."""
    m = mask.to(log_survive.dtype)
    before = torch.cumsum(log_survive * m, dim=1) - log_survive * m  # exclusive prefix sum
    return (torch.exp(before) * m).sum(dim=1)


def kl_topk(logits: Tensor, topk_ids: Tensor, topk_logits: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """The dense top-k KL from logits `[B, T, V]` (what `terms` computes from position stats)."""
    stats = {"z_topk": logits.gather(-1, topk_ids), "lse_tau": torch.logsumexp(logits / temperature, dim=-1)}
    return _kl_dense(stats, topk_logits, mask, temperature)


def _kl_dense(stats: dict[str, Tensor], topk_logits: Tensor, mask: Tensor, temperature: float) -> Tensor:
    p_teacher = F.softmax(topk_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(topk_logits / temperature, dim=-1)
    log_q = stats["z_topk"] / temperature - stats["lse_tau"].unsqueeze(-1)
    kl = (p_teacher * (log_p_teacher - log_q)).sum(-1)
    return masked_mean(kl, mask) * temperature ** 2


def length_kd(stats: dict[str, Tensor], batch: dict[str, Tensor], mask: Tensor, eos_id: int, hinge: float,
              slope: float) -> Tensor:
    p_eos_s = (stats["z_eos"] - stats["lse"]).exp().clamp(max=1 - 1e-6)
    tk_ids, tk_logits = batch["topk_ids"][:, :-1], batch["topk_logits"][:, :-1]
    p_t = F.softmax(tk_logits, dim=-1)
    p_eos_t = (p_t * (tk_ids == eos_id).to(p_t.dtype)).sum(-1).clamp(max=1 - 1e-6)
    len_s = _expected_length(torch.log1p(-p_eos_s), mask)
    len_t = _expected_length(torch.log1p(-p_eos_t), mask)
    excess = (len_s - len_t) / len_t.clamp_min(1.0)
    penalty = slope * torch.relu(excess - hinge)
    with torch.no_grad():
        required = (batch["json_args_mask"][:, 1:] + batch["integration_mask"][:, 1:]) > 0
        wrong = (stats["argmax"] != batch["input_ids"][:, 1:]) & required
        incomplete = wrong.any(dim=1)
        has_target = mask.any(dim=1)
    return masked_mean(penalty, incomplete & has_target)


def early_tool(ce: Tensor, batch: dict[str, Tensor], mask: Tensor, start_id: int, end_id: int, within: int) -> Tensor:
    ids = batch["input_ids"][:, 1:]
    in_target = mask.to(torch.long)
    target_index = torch.cumsum(in_target, dim=1) - 1  # 0 for the first target token
    opened = torch.cumsum((ids == start_id).long(), dim=1)
    closed = torch.cumsum((ids == end_id).long(), dim=1) - (ids == end_id).long()
    in_call = (opened > closed) & (opened > 0)
    needs_tool = ((ids == start_id) & mask).any(dim=1, keepdim=True)
    sel = in_call & mask & (target_index < within) & needs_tool
    return masked_mean(ce, sel)


def terms(stats: dict[str, Tensor], batch: dict[str, Tensor], losses: dict[str, Any],
          special: dict[str, int]) -> dict[str, Tensor]:
    """Raw (unweighted) value of every configured term, in ORDER, from `position_stats` of all positions."""
    mask = batch["loss_mask"][:, 1:] > 0
    ce = stats["lse"] - stats["z_target"] if "z_target" in stats else None
    out: dict[str, Tensor] = {}
    for name in ORDER:
        cfg = losses.get(name)
        if cfg is None:
            continue
        if name == "kl" and sparse_kl(losses, batch):  # an HTTP teacher: its top-k logprobs + the mass outside, where it wrote
            out[name] = masked_position_mean(stats["kl_sparse"], mask & (batch["kd_mask"][:, :-1] > 0))
        elif name == "kl":
            out[name] = _kl_dense(stats, batch["topk_logits"][:, :-1], mask, cfg["temperature"])
        elif name == "ce_teacher":
            out[name] = masked_mean(stats["lse"] - stats["z_teacher"], mask)
        elif name == "ce_ground_truth":
            out[name] = masked_mean(ce, mask)
        elif name in SPAN_TERMS:
            out[name] = masked_mean(ce, (batch[SPAN_TERMS[name]][:, 1:] > 0) & mask)
        elif name == "length_kd":
            out[name] = length_kd(stats, batch, mask, special["eos"], cfg["hinge"], cfg["slope"])
        elif name == "early_tool":
            out[name] = early_tool(ce, batch, mask, special["tool_call_start"], special["tool_call_end"], cfg["within_tokens"])
    return out


def check(batch: dict[str, Tensor], losses: dict[str, Any], vocab: int) -> None:
    """What the terms assume of the targets, checked once per batch (not per chunk)."""
    if sparse_kl(losses, batch):
        from .sparse_kl import check_ids

        if float(losses["kl"]["temperature"]) != 1.0:
            raise ValueError(f"kl_sparse_tail: temperature must be 1 (got {losses['kl']['temperature']}): API logprobs "
                             "are the teacher at temperature 1")
        check_ids(batch["topk_ids"], vocab)


def compute(logits: Tensor, batch: dict[str, Tensor], losses: dict[str, Any], special: dict[str, int]) -> dict[str, Tensor]:
    """Raw (unweighted) value of every configured term, in ORDER, from whole logits `[B, T, V]`."""
    check(batch, losses, logits.shape[-1])
    stats = position_stats(logits[:, :-1], aligned(batch), needed(losses, batch), losses, special)
    return terms(stats, batch, losses, special)

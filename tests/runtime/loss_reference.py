"""The loss terms as runtime/train/losses.py computed them before the chunked head (commit d0989f0):
whole fp32 log-probabilities of whole logits. An independent oracle for tests/runtime/test_train_compute.py,
kept as it was; the definitions below are the runtime's contract.
Every loss term of `training.losses`, as pure functions of student logits and a batch.

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
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from runtime.train.sparse_kl import kl_sparse_tail

SPAN_TERMS = {"tool_name": "tool_name_mask", "json_args": "json_args_mask", "integration": "integration_mask"}
ORDER = ("kl", "ce_teacher", "ce_ground_truth", "tool_name", "json_args", "integration", "length_kd", "early_tool")


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def _token_ce(logp: Tensor, targets: Tensor) -> Tensor:
    return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def kl_topk(logits: Tensor, topk_ids: Tensor, topk_logits: Tensor, mask: Tensor, temperature: float) -> Tensor:
    p_teacher = F.softmax(topk_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(topk_logits / temperature, dim=-1)
    log_q = F.log_softmax(logits / temperature, dim=-1).gather(-1, topk_ids)
    kl = (p_teacher * (log_p_teacher - log_q)).sum(-1)
    return _masked_mean(kl, mask) * temperature ** 2


def _expected_length(log_survive: Tensor, mask: Tensor) -> Tensor:
    """sum over masked t of prod_{u<t, u masked} (1 - hazard_u), from log(1 - hazard)."""
    m = mask.to(log_survive.dtype)
    before = torch.cumsum(log_survive * m, dim=1) - log_survive * m  # exclusive prefix sum
    return (torch.exp(before) * m).sum(dim=1)


def length_kd(logp: Tensor, batch: dict[str, Tensor], mask: Tensor, eos_id: int, hinge: float, slope: float) -> Tensor:
    p_eos_s = logp[..., eos_id].exp().clamp(max=1 - 1e-6)
    tk_ids, tk_logits = batch["topk_ids"][:, :-1], batch["topk_logits"][:, :-1]
    p_t = F.softmax(tk_logits, dim=-1)
    p_eos_t = (p_t * (tk_ids == eos_id).to(p_t.dtype)).sum(-1).clamp(max=1 - 1e-6)
    len_s = _expected_length(torch.log1p(-p_eos_s), mask)
    len_t = _expected_length(torch.log1p(-p_eos_t), mask)
    excess = (len_s - len_t) / len_t.clamp_min(1.0)
    penalty = slope * torch.relu(excess - hinge)
    with torch.no_grad():
        required = (batch["json_args_mask"][:, 1:] + batch["integration_mask"][:, 1:]) > 0
        wrong = (logp.argmax(-1) != batch["input_ids"][:, 1:]) & required
        incomplete = wrong.any(dim=1)
        has_target = mask.any(dim=1)
    return _masked_mean(penalty, incomplete & has_target)


def early_tool(logp: Tensor, batch: dict[str, Tensor], mask: Tensor, start_id: int, end_id: int, within: int) -> Tensor:
    ids = batch["input_ids"][:, 1:]
    in_target = mask.to(torch.long)
    target_index = torch.cumsum(in_target, dim=1) - 1  # 0 for the first target token
    opened = torch.cumsum((ids == start_id).long(), dim=1)
    closed = torch.cumsum((ids == end_id).long(), dim=1) - (ids == end_id).long()
    in_call = (opened > closed) & (opened > 0)
    needs_tool = ((ids == start_id) & mask).any(dim=1, keepdim=True)
    sel = in_call & mask & (target_index < within) & needs_tool
    return _masked_mean(_token_ce(logp, ids), sel)


def compute(logits: Tensor, batch: dict[str, Tensor], losses: dict[str, Any], special: dict[str, int]) -> dict[str, Tensor]:
    """Raw (unweighted) value of every configured term, in ORDER."""
    logits = logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    mask = batch["loss_mask"][:, 1:] > 0
    logp = F.log_softmax(logits, dim=-1)
    out: dict[str, Tensor] = {}
    for name in ORDER:
        cfg = losses.get(name)
        if cfg is None:
            continue
        if name == "kl" and "kd_mask" in batch:  # an HTTP teacher: its top-k logprobs + the mass outside, where it wrote
            out[name] = kl_sparse_tail(logits, batch["topk_ids"][:, :-1], batch["topk_logprobs"][:, :-1],
                                       mask & (batch["kd_mask"][:, :-1] > 0), cfg["temperature"],
                                       batch["topk_log_tail"][:, :-1])
        elif name == "kl":
            out[name] = kl_topk(logits, batch["topk_ids"][:, :-1], batch["topk_logits"][:, :-1], mask, cfg["temperature"])
        elif name == "ce_teacher":
            out[name] = _masked_mean(_token_ce(logp, batch["topk_ids"][:, :-1, 0]), mask)
        elif name == "ce_ground_truth":
            out[name] = _masked_mean(_token_ce(logp, targets), mask)
        elif name in SPAN_TERMS:
            out[name] = _masked_mean(_token_ce(logp, targets), (batch[SPAN_TERMS[name]][:, 1:] > 0) & mask)
        elif name == "length_kd":
            out[name] = length_kd(logp, batch, mask, special["eos"], cfg["hinge"], cfg["slope"])
        elif name == "early_tool":
            out[name] = early_tool(logp, batch, mask, special["tool_call_start"], special["tool_call_end"], cfg["within_tokens"])
    return out

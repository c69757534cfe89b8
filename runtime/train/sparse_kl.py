"""KL(teacher || student) against sparse teacher logprobs that keep the mass outside the top k.

An HTTP teacher (OpenAI-compatible API, vLLM, SGLang) returns, per generated token, up to k
alternatives as (token id, logprob) with logprobs from its FULL distribution (not renormalised
over the k), so the mass outside them is known: tail = 1 - sum_i exp(logprob_i). Both models are
compared on the same k+1 outcomes: the k ids and "everything else".

    teacher:  p_i = exp(logprob_i),  p_tail = max(0, 1 - sum_i p_i)
    student:  q_i = softmax(logits)[id_i],  q_tail = 1 - sum_i q_i
    kl        = sum_i p_i (log p_i - log q_i) + p_tail (log p_tail - log q_tail)

and the term is the masked mean of `kl` over positions (0 with a zero gradient when the mask is
empty), like every term of `losses.py`.

Alignment (the convention of `losses.py` and `jobs/teacher_targets.py`): the target at position t
describes the distribution of token t+1 given tokens 0..t, and so does `logits[:, t]` of a causal
LM. A trainer therefore passes `logits[:, :-1]`, `ids[:, :-1]`, `logprobs[:, :-1]` and
`loss_mask[:, 1:] > 0`, exactly as `losses.compute` slices the dense top-k targets for `kl_topk`.

Details:
- Absent entries (id -1: the server returned fewer than k alternatives) are ignored whatever
  their logprob holds; their mass is simply part of the tail. Positions with no entry at all give
  0 (teacher and student both put everything on "everything else").
- Duplicate ids within a position are not supported (the sparse store rejects them).
- Servers round logprobs, so sum_i p_i can exceed 1 by a hair: the teacher tail is clamped at 0
  and the k+1 teacher outcomes are renormalised to sum to 1 (a no-op when they already do).
  `teacher_log_tail` (log of the tail, as the sparse store keeps it, computed from the
  unrounded logprobs) can be given instead of deriving the tail from `teacher_logprobs`; pass it
  when the logprobs were rounded to float16 (`generation/sparse.py` measures why).
- The student's tail is never computed as log(1 - sum q_i) (catastrophic cancellation when the
  student puts ~all its mass on the k ids, and a dead gradient where it is clamped): it is the
  logsumexp of the student's logits with the k ids knocked out, minus the full logsumexp. A
  constant "sink" logit 1000 nats below the full logsumexp keeps that logsumexp finite when the
  k ids cover the whole vocabulary (exp(-1000) is exactly 0 in float32 and float64, so it adds
  nothing otherwise) and so keeps gradients finite. Cost: one extra [B, T, V+1] copy of the logits.
- Compute dtype: float32, or float64 when the student logits are float64.

Temperature: only temperature == 1 is accepted (anything else raises ValueError). API logprobs
are the teacher's distribution at temperature 1, and the k+1 collapsed distribution cannot be
re-tempered: the tail mass at temperature tau depends on how the unseen mass is spread over the
other tokens (sum_j p_j^(1/tau), unknown), so exp(log p_tail / tau) renormalised is not the
tempered teacher's tail. Tempering the student alone would train it towards a distribution
that is not the teacher's at any temperature. A trainer that wants tau != 1 for the dense top-k
term keeps using `losses.kl_topk` for that; this term is always at tau = 1 (so no tau^2 factor).
"""

from __future__ import annotations

import torch
from torch import Tensor

SINK_NATS = 1000.0  # the sink logit's distance below the student's logsumexp


def _check(student_logits: Tensor, ids: Tensor, teacher_logprobs: Tensor, mask: Tensor,
           teacher_log_tail: Tensor | None, temperature: float) -> None:
    if float(temperature) != 1.0:
        raise ValueError(f"kl_sparse_tail: temperature must be 1 (got {temperature}): API logprobs are the teacher at "
                         "temperature 1 and a distribution collapsed to top-k + tail cannot be re-tempered")
    if student_logits.dim() != 3:
        raise ValueError(f"kl_sparse_tail: student_logits must be [B, T, V], got {tuple(student_logits.shape)}")
    b, t, _ = student_logits.shape
    if ids.dim() != 3 or tuple(ids.shape[:2]) != (b, t):
        raise ValueError(f"kl_sparse_tail: ids must be [B, T, k] = [{b}, {t}, k], got {tuple(ids.shape)}")
    if tuple(teacher_logprobs.shape) != tuple(ids.shape):
        raise ValueError(f"kl_sparse_tail: teacher_logprobs {tuple(teacher_logprobs.shape)} != ids {tuple(ids.shape)}")
    if tuple(mask.shape) != (b, t):
        raise ValueError(f"kl_sparse_tail: mask must be [B, T] = [{b}, {t}], got {tuple(mask.shape)}")
    if teacher_log_tail is not None and tuple(teacher_log_tail.shape) != (b, t):
        raise ValueError(f"kl_sparse_tail: teacher_log_tail must be [B, T], got {tuple(teacher_log_tail.shape)}")
    if ids.dtype.is_floating_point:
        raise ValueError(f"kl_sparse_tail: ids must be an integer tensor, got {ids.dtype}")


def _teacher_outcomes(present: Tensor, teacher_logprobs: Tensor, teacher_log_tail: Tensor | None,
                      dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Teacher log-probs of the k ids (-inf where absent) and of the tail, normalised over the k+1."""
    neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=teacher_logprobs.device)
    lp = torch.where(present, teacher_logprobs.to(dtype), neg_inf)
    if teacher_log_tail is None:
        mass = torch.exp(lp).sum(-1)
        log_tail = torch.log((1.0 - mass).clamp_min(0.0))  # -inf where the tail is 0 (or rounded below)
    else:
        log_tail = teacher_log_tail.to(dtype)
    outcomes = torch.cat([lp, log_tail.unsqueeze(-1)], dim=-1)
    outcomes = outcomes - torch.logsumexp(outcomes, dim=-1, keepdim=True)
    return outcomes[..., :-1], outcomes[..., -1]


def _student_outcomes(logits: Tensor, present: Tensor, safe_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Student log-probs at the k ids (garbage where absent) and of everything else."""
    lse = torch.logsumexp(logits, dim=-1)
    log_q = logits.gather(-1, safe_ids) - lse.unsqueeze(-1)
    v = logits.shape[-1]
    sink = (lse.detach() - SINK_NATS).unsqueeze(-1)
    rest = torch.cat([logits, sink], dim=-1)  # a fresh tensor: the in-place knock-out below is safe
    index = torch.where(present, safe_ids, torch.full_like(safe_ids, v))
    src = torch.where(present, torch.full_like(log_q, float("-inf")), sink.expand_as(log_q))
    rest.scatter_(-1, index, src)
    log_q_tail = torch.logsumexp(rest, dim=-1) - lse
    return log_q, log_q_tail


def kl_sparse_tail_positions(logits: Tensor, ids: Tensor, teacher_logprobs: Tensor,
                             teacher_log_tail: Tensor | None = None) -> Tensor:
    """The KL at every position `[B, T]`, unmasked (garbage, even NaN, where a position has no target):
    what `kl_sparse_tail` averages. Inputs are checked by `kl_sparse_tail` (or the caller); `logits` are
    used in their own dtype (float32 or float64)."""
    dtype = logits.dtype
    ids = ids.long()
    present = ids >= 0
    safe_ids = ids.clamp_min(0)
    lp, lp_tail = _teacher_outcomes(present, teacher_logprobs, teacher_log_tail, dtype)
    lq, lq_tail = _student_outcomes(logits, present, safe_ids)
    # p * (log p - log q), written so that p = 0 outcomes give exactly 0 with a zero (not NaN) gradient
    live = present & torch.isfinite(lp)
    zero = torch.zeros((), dtype=dtype, device=logits.device)
    lp_s, lq_s = torch.where(live, lp, zero), torch.where(live, lq, zero)
    kl_k = (torch.where(live, torch.exp(lp_s), zero) * (lp_s - lq_s)).sum(-1)
    live_t = torch.isfinite(lp_tail)
    lpt_s, lqt_s = torch.where(live_t, lp_tail, zero), torch.where(live_t, lq_tail, zero)
    kl_t = torch.where(live_t, torch.exp(lpt_s), zero) * (lpt_s - lqt_s)
    return kl_k + kl_t


def masked_position_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over the masked positions; garbage at unmasked positions never leaks (even NaN)."""
    m = mask.to(values.dtype)
    values = torch.where(m > 0, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return (values * m).sum() / m.sum().clamp_min(1.0)


def check_ids(ids: Tensor, vocab: int) -> None:
    if bool(((ids < -1) | (ids >= vocab)).any()):
        raise ValueError(f"kl_sparse_tail: ids must lie in [-1, {vocab}) (-1 = absent), got "
                         f"[{int(ids.min())}, {int(ids.max())}]")


def kl_sparse_tail(student_logits: Tensor, ids: Tensor, teacher_logprobs: Tensor, mask: Tensor,
                   temperature: float = 1.0, teacher_log_tail: Tensor | None = None) -> Tensor:
    """Masked mean over positions of KL(teacher || student) on the k ids + "everything else".

    student_logits [B, T, V]; ids [B, T, k] (-1 = absent); teacher_logprobs [B, T, k] (full-
    distribution logprobs at temperature 1); mask [B, T] (bool or 0/1); teacher_log_tail [B, T]
    optional (log of the mass outside the k ids; derived from teacher_logprobs when None).
    """
    _check(student_logits, ids, teacher_logprobs, mask, teacher_log_tail, temperature)
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    check_ids(ids, student_logits.shape[-1])
    kl = kl_sparse_tail_positions(student_logits.to(dtype), ids, teacher_logprobs, teacher_log_tail)
    return masked_position_mean(kl, mask)

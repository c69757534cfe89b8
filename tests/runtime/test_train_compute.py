"""`training.compute` on CPU: every setting computes the same loss terms and gradients.

- The chunked loss head (runtime/train/head.py) against the loss as it was computed before it,
  on whole fp32 log-probabilities (tests/runtime/loss_reference.py): term values, parameter
  gradients and the per-term gradient norms of the balance alert, for dense top-k targets (a
  local teacher) and sparse targets with the tail (an HTTP teacher), at several chunk sizes.
- sdpa against eager attention at every real position, right- and left-padded.
- Per-layer activation checkpointing: the same gradients, recomputed.
- bf16 autocast: matmuls run in bf16, parameters, gradients and AdamW state stay fp32, and the
  terms stay within bf16 rounding of fp32.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from compiler.planning.params import TrainParams
from runtime.model.student import Student
from runtime.train.head import LossHead
from runtime.train.loop import make_optimizer
from runtime.train.metrics import grad_norms
from runtime.train.precision import autocast
from tests.runtime import loss_reference
from tests.runtime.conftest import toy_params

TP = TrainParams.model_validate(toy_params("train"), strict=False).training
ARCH = TP.architecture
SPECIAL = TP.special_token_ids
V = ARCH.vocab_size
HTTP_LOSSES = {"kl": {"weight": 1.0, "temperature": 1.0}, "ce_ground_truth": {"weight": 0.5},
               "tool_name": {"weight": 0.3}, "json_args": {"weight": 0.3}, "integration": {"weight": 0.2},
               "early_tool": {"weight": 0.2, "within_tokens": 8}}


def make_batch(b: int = 3, s: int = 40, k: int = 8, *, sparse: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded rows (lengths s, s - 9, 12) with tool calls, span masks and teacher targets."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(16, V, (b, s), generator=g)
    ids[:, 6] = SPECIAL["tool_call_start"]
    ids[:, 11] = SPECIAL["tool_call_end"]
    ids[:, 30] = SPECIAL["eos"]
    lengths = [s, s - 9, 12][:b]
    att = torch.zeros(b, s, dtype=torch.long)
    for r, n in enumerate(lengths):
        att[r, :n] = 1
        ids[r, n:] = SPECIAL["pad"]
    loss = ((torch.arange(s) >= 4).long() * att)
    span = lambda a, z: ((torch.arange(s) >= a) & (torch.arange(s) < z)).long().expand(b, s) * att  # noqa: E731
    batch = {"input_ids": ids, "attention_mask": att, "loss_mask": loss, "tool_name_mask": span(7, 9),
             "json_args_mask": span(9, 11), "integration_mask": span(14, 20)}
    teacher = torch.randn(b, s, V, generator=g) * 3
    if not sparse:
        top = teacher.topk(k, dim=-1)
        return batch | {"topk_ids": top.indices, "topk_logits": top.values}
    logp = F.log_softmax(teacher.double(), dim=-1)
    top = logp.topk(k, dim=-1)
    ids_k = top.indices.clone()
    ids_k[:, ::3, k - 3:] = -1  # the server sent fewer alternatives at some positions
    lp = torch.where(ids_k >= 0, top.values, torch.zeros_like(top.values))
    tail = torch.log1p(-torch.where(ids_k >= 0, lp.exp(), 0.0).sum(-1).clamp(max=1 - 1e-12))
    kd = loss.clone()
    kd[:, 20:24] = 0  # positions the teacher did not answer
    return batch | {"topk_ids": ids_k, "topk_logprobs": lp.float(), "topk_log_tail": tail.float(), "kd_mask": kd}


def _reference(model: Student, batch: dict, losses: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
    model.zero_grad()
    logits = model(batch["input_ids"], batch["attention_mask"])
    terms = loss_reference.compute(logits, batch, losses, SPECIAL)
    probe = logits.detach().requires_grad_()
    norms = grad_norms({n: v for n, v in loss_reference.compute(probe, batch, losses, SPECIAL).items()}, probe)
    sum(terms.values()).backward()
    return terms, {n: p.grad.clone() for n, p in model.named_parameters()}, norms


def _head(model: Student, batch: dict, losses: dict, chunk: int, precision: str = "fp32"):
    model.zero_grad()
    with autocast(precision, torch.device("cpu")):
        out = model(batch["input_ids"], batch["attention_mask"],
                    head=LossHead(batch, losses, SPECIAL, chunk, probe=dict.fromkeys(losses, 1.0)))
    sum(out["terms"].values()).backward()
    return out["terms"], {n: p.grad.clone() for n, p in model.named_parameters()}, out["grad_norm_by_loss"]


@pytest.mark.parametrize("sparse", [False, True], ids=["dense-topk", "sparse-tail"])
@pytest.mark.parametrize("chunk", [0, 1, 7, 1024])
def test_chunked_head_matches_the_whole_logits_reference(chunk: int, sparse: bool):
    losses = HTTP_LOSSES if sparse else TP.losses
    batch = make_batch(sparse=sparse)
    model = Student(ARCH, seed=0).train()
    ref_terms, ref_grads, ref_norms = _reference(model, batch, losses)
    assert set(ref_terms) == set(losses) and all(v.item() > 0 for n, v in ref_terms.items() if n != "length_kd")
    terms, grads, norms = _head(model, batch, losses, chunk)
    for name, value in ref_terms.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), name
        assert norms[name] == pytest.approx(ref_norms[name], rel=1e-4, abs=1e-9), name
    for name, grad in ref_grads.items():
        assert torch.allclose(grads[name], grad, rtol=1e-4, atol=1e-6), (name, float((grads[name] - grad).abs().max()))


def test_a_chunked_head_keeps_no_logits_for_the_backward():
    """chunk > 0: nothing vocabulary-sized is saved for the backward pass; chunk 0 keeps the fp32 logits."""
    batch = make_batch()
    model = Student(ARCH, seed=0).train()

    def vocab_sized(chunk: int) -> int:
        found = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.dim() >= 2 and t.shape[-1] == V and not isinstance(t, torch.nn.Parameter):
                found.append(t.shape)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(batch["input_ids"], batch["attention_mask"], head=LossHead(batch, TP.losses, SPECIAL, chunk))
        return len(found)

    assert vocab_sized(0) > 0
    assert vocab_sized(8) == 0


@pytest.mark.parametrize("padding", ["right", "left"])
def test_sdpa_matches_eager_at_every_real_position(padding: str):
    batch = make_batch()
    att = batch["attention_mask"] if padding == "right" else batch["attention_mask"].flip(1)
    eager = Student(ARCH, seed=0).train()
    sdpa = Student(ARCH, seed=0).configure("sdpa").train()
    a, b = eager(batch["input_ids"], att), sdpa(batch["input_ids"], att)
    real = att.bool()
    assert float((a - b)[real].abs().max()) < 1e-5
    (a[real].logsumexp(-1).sum()).backward()
    (b[real].logsumexp(-1).sum()).backward()
    for (name, p), q in zip(eager.named_parameters(), sdpa.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def test_activation_checkpointing_recomputes_the_same_gradients():
    batch = make_batch()
    model = Student(ARCH, seed=0).configure("sdpa").train()
    terms, grads, _ = _head(model, batch, TP.losses, 16)
    model.configure("sdpa", checkpointing=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        model(batch["input_ids"], batch["attention_mask"], head=LossHead(batch, TP.losses, SPECIAL, 16))
    assert not any(len(s) == 3 and s[-1] == ARCH.mlp_hidden for s in saved)  # no MLP activation is kept
    again, grads2, _ = _head(model, batch, TP.losses, 16)
    assert all(terms[n].item() == again[n].item() for n in terms)
    for name, grad in grads.items():
        assert torch.allclose(grads2[name], grad, rtol=1e-5, atol=1e-8), name


def test_bf16_autocast_computes_in_bf16_and_keeps_fp32_state():
    batch = make_batch()
    model = Student(ARCH, seed=0).configure("sdpa").train()
    fp32_terms, _, _ = _head(model, batch, TP.losses, 16)
    seen = {}

    def record(module, inputs, output) -> None:
        seen["gate"] = (inputs[0].dtype, output.dtype)

    hook = model.layers[0].mlp.gate_proj.register_forward_hook(record)
    terms, grads, _ = _head(model, batch, TP.losses, 16, precision="bf16")
    hook.remove()
    assert seen["gate"] == (torch.bfloat16, torch.bfloat16)  # the norm's output is cast once, the matmul runs in bf16
    for name, value in fp32_terms.items():  # bf16 rounds to 2^-8 relative; the loss terms are fp32 sums of it
        assert terms[name].item() == pytest.approx(value.item(), rel=3e-2, abs=1e-3), name
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(math.isfinite(float(g.abs().sum())) for g in grads.values())
    opt = make_optimizer(model, TP)
    opt.step()
    assert all(s.dtype == torch.float32 for state in opt.state.values() for s in state.values() if s.dim() > 0)

"""The compiler's activation estimate (compiler/analysis/estimates.py) against what the runtime really keeps.

One training forward of the student through the loss head (runtime/train/head.py) with every loss
term of the toy spec, on CPU, under each `training.compute` combination: the bytes of the tensors
autograd saves for the backward pass (parameters excluded, each storage counted once; with
recomputation, what `torch.utils.checkpoint` keeps) versus `rank_memory(...).per_token`
(activations, attention scores, logits, bf16 weight copies). When the runtime changes how it
computes this fails, and the formulas change with it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from compiler.analysis.derived import dims
from compiler.analysis.estimates import Kernels, rank_memory
from compiler.analysis.modules import canonical_modules
from compiler.planning.params import TrainParams
from runtime.model.student import Student, schema_architecture
from runtime.train.head import LossHead
from runtime.train.precision import autocast
from tests.runtime.conftest import toy_params


def _batch(b: int, s: int, vocab: int, k: int, special: dict[str, int]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(16, vocab, (b, s), generator=g)
    ids[:, s // 2] = special["tool_call_start"]
    ids[:, s // 2 + 4] = special["tool_call_end"]
    half = (torch.arange(s) >= s // 4).float().expand(b, s).contiguous()
    return {"input_ids": ids, "attention_mask": torch.ones(b, s, dtype=torch.long), "loss_mask": half,
            "topk_ids": torch.randint(0, vocab, (b, s, k), generator=g), "topk_logits": torch.randn(b, s, k, generator=g),
            "tool_name_mask": half, "json_args_mask": half, "integration_mask": half}


def kept_bytes(model: Student, batch: dict[str, torch.Tensor], tp, kernels: Kernels) -> int:
    """Bytes autograd keeps after the forward and the loss, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    model.configure(kernels.attention, kernels.recompute).train()
    head = LossHead(batch, tp.losses, tp.special_token_ids, kernels.loss_chunk)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(kernels.precision, torch.device("cpu")):
        out = model(batch["input_ids"], batch["attention_mask"], head=head)
    assert set(out["terms"]) == set(tp.losses)
    return sum(saved.values())


KERNELS = [
    Kernels(precision="fp32", attention="eager", recompute=False, loss_chunk=0),  # the runtime before training.compute
    Kernels(precision="fp32", attention="sdpa", recompute=False, loss_chunk=0),
    Kernels(precision="fp32", attention="sdpa", recompute=False, loss_chunk=32),
    Kernels(precision="fp32", attention="sdpa", recompute=True, loss_chunk=32),
    Kernels(precision="bf16", attention="sdpa", recompute=False, loss_chunk=32),
    Kernels(precision="bf16", attention="sdpa", recompute=True, loss_chunk=32),
    Kernels(precision="bf16", attention="eager", recompute=False, loss_chunk=0),
    Kernels(precision="bf16", attention="sdpa", recompute=True, loss_chunk=0),
]


@pytest.mark.parametrize("kernels", KERNELS, ids=lambda k: f"{k.precision}-{k.attention}-{'recompute' if k.recompute else 'keep'}-chunk{k.loss_chunk}")
@pytest.mark.parametrize("micro_batch, seq_len, wider", [(4, 64, False), (2, 128, False), (1, 512, True)])
def test_activation_estimate_matches_what_autograd_keeps(micro_batch: int, seq_len: int, wider: bool, kernels: Kernels):
    tp = TrainParams.model_validate(toy_params("train"), strict=False).training
    a = tp.architecture
    if wider:  # GQA 4:1, three layers, a wider MLP: the per-layer and per-head terms weigh differently
        a = a.model_copy(update=dict(d_model=256, n_heads=8, n_kv_heads=2, d_head=32, mlp_hidden=704, n_layers=3))
    arch = schema_architecture(a)
    model = Student(a, seed=0)
    batch = _batch(micro_batch, seq_len, arch.vocab_size, 8, tp.special_token_ids)
    measured = kept_bytes(model, batch, tp, kernels)
    estimate = rank_memory(dims(arch, canonical_modules(arch)), "ddp", 1, micro_batch, seq_len,
                           kernels=dataclasses.replace(kernels, top_k=8)).per_token
    assert abs(measured - estimate) / measured < 0.05, (measured, estimate)

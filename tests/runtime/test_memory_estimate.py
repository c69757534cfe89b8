"""The compiler's activation estimate (compiler/analysis/estimates.py) against what the runtime really keeps.

One training forward of the student plus every loss term of the toy spec, on CPU: the bytes of
the tensors autograd saves for the backward pass (parameters excluded, each storage counted
once) plus the logits the loop holds, versus `rank_memory(...).per_token` (activations,
attention scores, logits). When the runtime changes how it computes (bf16, another attention
kernel, recomputation) this fails, and `estimates.RUNTIME` and the formulas change with it.
"""

from __future__ import annotations

import pytest
import torch

from compiler.analysis.derived import dims
from compiler.analysis.estimates import rank_memory
from compiler.analysis.modules import canonical_modules
from compiler.planning.params import TrainParams
from runtime.model.student import Student, schema_architecture
from runtime.train import losses
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


def _kept_bytes(model: Student, batch: dict[str, torch.Tensor], tp) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(batch["input_ids"], batch["attention_mask"])
        terms = losses.compute(logits, batch, tp.losses, tp.special_token_ids)
    assert set(terms) == set(tp.losses)
    saved.pop(logits.untyped_storage().data_ptr(), None)
    return sum(saved.values()) + logits.untyped_storage().nbytes()  # the loop holds the logits through backward


@pytest.mark.parametrize("micro_batch, seq_len", [(4, 64), (2, 128)])
def test_activation_estimate_matches_what_autograd_keeps(micro_batch: int, seq_len: int):
    tp = TrainParams.model_validate(toy_params("train"), strict=False).training
    arch = schema_architecture(tp.architecture)
    model = Student(tp.architecture, seed=0)
    batch = _batch(micro_batch, seq_len, arch.vocab_size, 8, tp.special_token_ids)
    measured = _kept_bytes(model, batch, tp)
    estimate = rank_memory(dims(arch, canonical_modules(arch)), "ddp", 1, micro_batch, seq_len).per_token
    assert abs(measured - estimate) / measured < 0.05, (measured, estimate)

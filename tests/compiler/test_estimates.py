"""compiler/analysis/estimates.py and its use in derived.py and rules.py: per-rank training memory and FLOPs.

The numbers below are worked out by hand for a tiny architecture (docs/scale.md states the
formulas): d_model 8, 2 layers, 2 heads of 4, 1 KV head, SwiGLU 16, vocabulary 32, untied.
  embed 32x8 = 256; per layer: 2 norms 16 + q 64 + k 32 + v 32 + o 64 + gate/up/down 3 x 128 = 592;
  final norm 8; lm_head 256  ->  N = 256 + 2 x 592 + 8 + 256 = 1704, largest fsdp2 unit 592.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from compiler.output.build import compile_one
from compiler.core.errors import SpecError
from compiler.analysis.estimates import (
    FP32_EAGER, Dims, Kernels, flops_per_token, layer_activation_bytes, min_fsdp2_ranks, rank_memory,
)
from compiler.output.training_report import fit_warnings

REPO = Path(__file__).resolve().parents[2]
TINY = Dims(params=1704, n_layers=2, d_model=8, n_heads=2, d_head=4, mlp_hidden=16, vocab_size=32, largest_unit=592,
            qat_params=2 * (64 + 32 + 32 + 64 + 3 * 128) + 256, n_kv_heads=1, layer_linear_params=2 * 576, head_params=256)


def test_ddp_fp32_eager_unchunked_by_hand():
    m = rank_memory(TINY, "ddp", world=4, micro_batch=2, seq_len=16, kernels=FP32_EAGER)
    assert (m.weights, m.grads, m.master, m.optimizer, m.gathered, m.qat_weights) == (6816, 6816, 0, 13632, 0, 0)
    assert m.state == 1704 * 16 == 27264  # ddp: every rank holds everything, whatever the world size
    # per token and layer: two norms 2 x ((4 + 4 + 4) x 8 + 4) = 200, eager attention 4 x 4 x 8 = 128,
    # the MLP 4 x 4 x 16 = 256 -> 584; the final norm 100; the loss's values 11 x 4 + 8 = 52 (k = 0);
    # RoPE tables 2 x 16 x 4 x 4 = 512 per micro-batch
    assert layer_activation_bytes(TINY, FP32_EAGER) == 584
    assert m.activations == 32 * (2 * 584 + 100 + 52) + 512 == 42752
    assert m.attention_scores == 2 * 2 * 2 * 16 * 16 * 4 == 8192  # b x L x H x s^2 x fp32
    assert m.logits == 32 * 32 * 4 * 2 == 8192  # the fp32 logits and their tempered copy
    assert (m.cast_weights, m.transient) == (0, 0)
    assert m.total == 27264 + 42752 + 8192 + 8192


def test_fsdp2_shards_the_state_and_adds_two_gathered_layers():
    m = rank_memory(TINY, "fsdp2", world=4, micro_batch=2, seq_len=16, kernels=FP32_EAGER)
    assert (m.weights, m.grads, m.optimizer) == (426 * 4, 426 * 4, 426 * 8)  # ceil(1704 / 4) = 426
    assert m.gathered == 2 * 592 * 4
    assert m.state == 11552
    assert rank_memory(TINY, "fsdp2", world=5, micro_batch=2, seq_len=16).state == 341 * 16 + 4736  # ceil(1704 / 5) = 341
    # activations are not sharded by fsdp2
    assert m.per_token == rank_memory(TINY, "ddp", world=4, micro_batch=2, seq_len=16, kernels=FP32_EAGER).per_token
    # the bf16 policy gathers bf16 parameters (and so casts nothing)
    bf16 = rank_memory(TINY, "fsdp2", world=4, micro_batch=2, seq_len=16, kernels=Kernels(precision="bf16"))
    assert bf16.gathered == 2 * 592 * 2 and bf16.cast_weights == 0


def test_qat_keeps_the_fake_quantized_linear_weights():
    plain = rank_memory(TINY, "fsdp2", world=4, micro_batch=2, seq_len=16)
    qat = rank_memory(TINY, "fsdp2", world=4, micro_batch=2, seq_len=16, qat=True)
    assert TINY.qat_params == 1408
    assert qat.qat_weights == 1408 * 4 and qat.state - plain.state == 1408 * 4


def test_bf16_sdpa_chunked_by_hand():
    k = Kernels(precision="bf16", attention="sdpa", recompute=False, loss_chunk=1024)
    m = rank_memory(TINY, "ddp", world=1, micro_batch=2, seq_len=16, kernels=k)
    assert m.state == 27264  # fp32 master weights, gradients and AdamW state: 16 bytes per parameter either way
    # norms 2 x ((4 + 4 + 2) x 8 + 4) = 168; sdpa 2 x 2 x 8 + 2 x 2 x 4 + 4 x 2 = 56; MLP 4 x 2 x 16 = 128
    assert layer_activation_bytes(TINY, k) == 352
    assert m.activations == 32 * (2 * 352 + 84 + 52) + 512
    assert m.attention_scores == 0 and m.logits == 0
    assert m.cast_weights == 2 * 1152  # the bf16 copies of the layers' linear weights; the lm_head's is recomputed
    assert m.transient == 2 * 16 * 32 * (2 + 12)  # one chunk of logits (all 16 positions) while it is recomputed


def test_recompute_keeps_each_layer_input():
    k = Kernels(precision="fp32", attention="sdpa", recompute=True, loss_chunk=1024)
    m = rank_memory(TINY, "ddp", world=1, micro_batch=2, seq_len=16, kernels=k)
    assert m.activations == 32 * 2 * 4 * 8 + 32 * 100 + 32 * 52 + 512  # every layer's input, the final norm, the loss
    assert m.transient == 32 * layer_activation_bytes(TINY, k) == 32 * 560  # one layer live again > one loss chunk
    eager = rank_memory(TINY, "ddp", world=1, micro_batch=2, seq_len=16, kernels=Kernels(attention="eager", recompute=True))
    assert eager.attention_scores == 0 and eager.transient == 32 * 584 + 2 * 2 * 256 * 4  # one layer's scores, live again


def test_flops_per_token_by_hand():
    assert flops_per_token(TINY, 16) == 6 * 1704 + 12 * 2 * 2 * 4 * 16 == 13296


def test_min_fsdp2_ranks():
    assert min_fsdp2_ranks(TINY, 10192) == 5  # room 10192 - 4736 = 5456 = 341 x 16
    assert min_fsdp2_ranks(TINY, 10191) == 6
    assert min_fsdp2_ranks(TINY, 4736) is None  # the two gathered layers alone fill it
    assert min_fsdp2_ranks(TINY, 10192 + 1408 * 4, qat=True) == 5


def test_unknown_strategy_is_a_bug():
    with pytest.raises(ValueError):
        rank_memory(TINY, "zero3", world=1, micro_batch=1, seq_len=1)


# --- derived.py: the toy spec's figures ----------------------------------------------------------


def _toy(tmp_path: Path, resources: str) -> Path:
    text = (REPO / "specs" / "toy.yaml").read_text(encoding="utf-8")
    old = "  resources: {device: cpu, nproc: 1}"
    assert old in text
    shutil.copytree(REPO / "specs" / "data", tmp_path / "data")
    path = tmp_path / "toy.yaml"
    path.write_text(text.replace(old, f"  resources: {resources}"), encoding="utf-8")
    return path


def test_derived_toy(tmp_path: Path):
    d = compile_one(str(_toy(tmp_path, "{device: cpu, nproc: 2, nodes: 2, strategy: fsdp2}")), []).derived
    # toy: d_model 128, 2 layers, 4 heads of 32 (2 KV heads), SwiGLU 352, vocabulary 512, untied
    layer = 2 * 128 + 2 * 128 * 128 + 2 * 64 * 128 + 3 * 128 * 352
    assert layer == 184576
    assert d.params == 2 * 512 * 128 + 2 * layer + 128 == 500352
    assert d.student_dims.largest_unit == layer
    assert d.world == 4 and d.global_batch == 16 * 1 * 2 * 2
    assert set(d.rank_memory) == {"teacher", "train", "qat"}
    assert sorted(d.rank_memory["train"]) == [64, 128]
    assert d.rank_memory["train"][64] == rank_memory(d.student_dims, "fsdp2", 4, 16, 64, kernels=Kernels(top_k=16))
    assert d.step_flops[128] == d.global_batch * 128 * (6 * d.params + 12 * 2 * 4 * 32 * 128)
    tokens = {64: 200 * 16 * 4 * 64, 128: 200 * 16 * 4 * 128}
    assert d.training_attention_flops == sum(n * 12 * 2 * 128 * s for s, n in tokens.items())


def test_memory_gb_rejects_a_model_state_that_cannot_fit(tmp_path: Path):
    # toy state under ddp: 500,352 x 16 B = 7.63 MiB; 0.005 GiB = 5.12 MiB
    with pytest.raises(SpecError) as info:
        compile_one(str(_toy(tmp_path, "{device: cpu, nproc: 4, memory_gb: 0.005}")), [])
    assert not (tmp_path / "generated").exists()
    problems = [p for p in info.value.problems if "train job" in p.message]
    assert len(problems) == 1, [p.format() for p in info.value.problems]
    assert problems[0].path == "training.resources.memory_gb"
    assert "7.63 MiB per rank under ddp over 4 ranks" in problems[0].message
    assert problems[0].hint == "use strategy: fsdp2, which shards it over the 4 ranks"


def test_memory_gb_hint_names_the_nodes_fsdp2_needs(tmp_path: Path):
    # fsdp2: ceil(500,352 / W) x 16 B + 2 x 184,576 x 4 B gathered <= 0.005 GiB first holds at W = 3 (3.95 MiB)
    with pytest.raises(SpecError) as info:
        compile_one(str(_toy(tmp_path, "{device: cpu, nproc: 1, strategy: fsdp2, memory_gb: 0.005}")), [])
    train = next(p for p in info.value.problems if "train job" in p.message)
    assert train.hint == "fsdp2 needs at least 3 ranks: nodes: 3 with nproc 1"


def test_memory_gb_that_fits_compiles(tmp_path: Path):
    c = compile_one(str(_toy(tmp_path, "{device: cpu, nproc: 4, strategy: fsdp2, memory_gb: 1}")), [])
    assert all(m.total <= 1 << 30 for by in c.derived.rank_memory.values() for m in by.values())


def test_activations_over_memory_gb_are_a_warning(tmp_path: Path):
    # fsdp2 over 4 ranks: the train state (3.32 MiB) fits 0.02 GiB; 16 x 128 tokens of activations do not
    c = compile_one(str(_toy(tmp_path, "{device: cpu, nproc: 4, strategy: fsdp2, memory_gb: 0.02}")), [])
    warnings = fit_warnings(c)
    train = next(w for w in warnings if w.startswith("train "))
    assert train.startswith("train at seq_len 64 needs an estimated ")
    assert "memory_gb is 0.02" in train and "lower micro_batch" in train
    assert c.derived.rank_memory["train"][64].state <= 0.02 * (1 << 30) < c.derived.rank_memory["train"][64].total
    assert fit_warnings(compile_one(str(REPO / "specs" / "toy.yaml"), [])) == []  # no memory_gb: nothing to compare


def test_a_1b_student_fits_one_80gb_gpu_at_16k():
    """Llama-3.2-1B's shape (d_model 2048, 16 layers, 32 heads / 8 KV heads of 64, SwiGLU 8192, vocabulary
    128256, tied): one device, micro_batch 1, 16384 tokens, against 80 GiB."""
    L, d, kv, m, V = 16, 2048, 8 * 64, 8192, 128256
    linear = L * (2 * d * d + 2 * d * kv + 3 * d * m)
    one_b = Dims(params=V * d + linear + (2 * L + 1) * d, n_layers=L, d_model=d, n_heads=32, d_head=64, mlp_hidden=m,
                 vocab_size=V, largest_unit=V * d + d, n_kv_heads=8, layer_linear_params=linear, head_params=V * d)
    assert 1.2e9 < one_b.params < 1.3e9
    budget = 80 * (1 << 30)
    shipped = Kernels(precision="bf16", attention="sdpa", recompute=True, loss_chunk=1024, top_k=16)
    assert rank_memory(one_b, "ddp", 1, 1, 16384, kernels=shipped).total < 0.3 * budget
    before = Kernels(precision="fp32", attention="eager", recompute=False, loss_chunk=0, top_k=16)
    assert rank_memory(one_b, "ddp", 1, 1, 16384, kernels=before).total > 7 * budget  # 512 GiB of eager scores alone
    no_recompute = Kernels(precision="fp32", attention="sdpa", recompute=False, loss_chunk=0, top_k=16)
    assert rank_memory(one_b, "ddp", 1, 1, 16384, kernels=no_recompute).total > budget

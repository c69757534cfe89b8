"""The student model: canonical names, KV-cache consistency, masking, HF Llama parity, torch.export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from compiler.planning.params import ArchitectureP
from runtime.model.student import Student, canonical, from_hf_state_dict, to_hf_state_dict

PLAN = Path(__file__).resolve().parents[2] / "generated" / "toy-worker" / "plan.json"


def toy_arch(**update: object) -> ArchitectureP:
    jobs = {j["id"]: j for j in json.loads(PLAN.read_text())["jobs"]}
    arch = ArchitectureP.model_validate(jobs["qat"]["params"]["training"]["architecture"])
    return arch.model_copy(update=update)


@torch.no_grad()
def spicy(model: Student, seed: int = 7) -> Student:
    """Larger random weights (and non-unit norms) than the init, so differences would show."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        p.copy_(1.0 + 0.2 * noise if p.ndim == 1 else 0.08 * noise)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> Student:
    return spicy(Student(toy_arch(), seed=0))


def tokens(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 512, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tie", [False, True])
def test_module_names_are_canonical(tie: bool) -> None:
    arch = toy_arch(tie_embeddings=tie)
    m = Student(arch)
    with_weights = {n: tuple(mod.weight.shape) for n, mod in m.named_modules()
                    if isinstance(getattr(mod, "weight", None), nn.Parameter)}
    assert with_weights == {mod.name: mod.shape for mod in canonical(arch)}
    assert set(m.state_dict()) == {f"{n}.weight" for n in with_weights}
    assert ("lm_head.weight" in m.state_dict()) is not tie
    assert all(p.ndim and "bias" not in n for n, p in m.named_parameters())


def test_same_seed_same_weights() -> None:
    a, b, c = Student(toy_arch(), 3), Student(toy_arch(), 3), Student(toy_arch(), 4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layers.0.self_attn.q_proj.weight"], sc["layers.0.self_attn.q_proj.weight"])


@torch.no_grad()
def test_prefill_then_decode_matches_forward(model: Student) -> None:
    ids = tokens(2, 40)
    full = model(ids)
    k, v = model.empty_cache(2, 48)
    logits, k, v = model.prefill(ids[:, :24], k, v)
    assert k.shape == (2, 2, 2, 48, 32) and v.shape == k.shape
    steps = [logits]
    for t in range(24, 40):
        out, k, v = model.decode(ids[:, t:t + 1], torch.tensor([t], dtype=torch.int32), k, v)
        assert out.shape == (2, 1, 512)
        steps.append(out)
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-4


@torch.no_grad()
def test_decode_ignores_cache_beyond_position(model: Student) -> None:
    ids = tokens(1, 9)
    k, v = model.empty_cache(1, 32)
    _, k, v = model.prefill(ids[:, :8], k, v)
    pos = torch.tensor([8])
    ref, k1, _ = model.decode(ids[:, 8:], pos, k, v)
    junk_k, junk_v = k.clone(), v.clone()
    junk_k[:, :, :, 9:] = 100.0
    junk_v[:, :, :, 9:] = -100.0
    out, k2, _ = model.decode(ids[:, 8:], pos, junk_k, junk_v)
    assert torch.equal(out, ref)
    assert torch.equal(k1[:, :, :, :9], k2[:, :, :, :9])


@torch.no_grad()
def test_causal(model: Student) -> None:
    a = tokens(2, 32, seed=1)
    b = a.clone()
    b[:, 20:] = tokens(2, 12, seed=2)
    assert (model(a)[:, :20] - model(b)[:, :20]).abs().max() < 1e-6
    ka, va = model.empty_cache(2, 32)
    pa, _, _ = model.prefill(a, ka, va)
    pb, _, _ = model.prefill(b, ka, va)
    assert (pa[:, :20] - pb[:, :20]).abs().max() < 1e-6


@torch.no_grad()
def test_padded_length_does_not_change_prefix(model: Student) -> None:
    prefix = tokens(1, 37, seed=3)
    outs = []
    for total in (64, 128):
        ids = torch.zeros(1, total, dtype=torch.long)
        ids[:, :37] = prefix
        mask = (torch.arange(total) < 37).long()[None]
        k, v = model.empty_cache(1, 128)
        outs.append((model(ids, attention_mask=mask)[:, :37], model.prefill(ids, k, v)[0][:, :37]))
    assert (outs[0][0] - outs[1][0]).abs().max() < 1e-5
    assert (outs[0][1] - outs[1][1]).abs().max() < 1e-5
    assert (outs[0][0] - outs[0][1]).abs().max() < 1e-5


@torch.no_grad()
def test_padded_keys_never_attended(model: Student) -> None:
    ids = tokens(2, 24, seed=4)
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[0, :5] = 0  # left padding: row 0's first query sees no real key at all
    mask[1, 18:] = 0  # right padding
    other = ids.clone()
    other[0, :5] = tokens(1, 5, seed=5)
    other[1, 18:] = tokens(1, 6, seed=6)
    a, b = model(ids, attention_mask=mask), model(other, attention_mask=mask)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a[0, 5:] - b[0, 5:]).abs().max() < 1e-6
    assert (a[1, :18] - b[1, :18]).abs().max() < 1e-6


def test_fp16_is_finite() -> None:
    m = Student(toy_arch(), seed=0, dtype=torch.float16)
    ids = tokens(1, 16)
    mask = torch.ones(1, 16, dtype=torch.long)
    mask[0, :4] = 0
    with torch.no_grad():
        out = m(ids, attention_mask=mask)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def hf_llama(arch: ArchitectureP) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=arch.vocab_size, hidden_size=arch.d_model, intermediate_size=arch.mlp_hidden,
        num_hidden_layers=arch.n_layers, num_attention_heads=arch.n_heads, num_key_value_heads=arch.n_kv_heads,
        head_dim=arch.d_head, rms_norm_eps=arch.norm_eps, max_position_embeddings=arch.max_context,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta},
        tie_word_embeddings=arch.tie_embeddings, attention_bias=False, mlp_bias=False, attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("tie", [False, True])
@torch.no_grad()
def test_matches_transformers_llama(tie: bool) -> None:
    arch = toy_arch(tie_embeddings=tie)
    student = spicy(Student(arch, seed=1))
    hf = hf_llama(arch)
    hf.load_state_dict(to_hf_state_dict(student.state_dict()), strict=True)
    ids = tokens(2, 48, seed=8)
    assert (hf(ids).logits - student(ids)).abs().max() < 1e-4
    back = Student(arch, seed=2)
    back.load_state_dict(from_hf_state_dict(hf.state_dict(), tie_embeddings=tie), strict=True)
    assert (back(ids) - student(ids)).abs().max() == 0


class PrefillFn(nn.Module):
    def __init__(self, m: Student) -> None:
        super().__init__()
        self.m = m

    def forward(self, ids: torch.Tensor, k: torch.Tensor, v: torch.Tensor):  # noqa: ANN201
        return self.m.prefill(ids, k, v)


class DecodeFn(PrefillFn):
    def forward(self, ids: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):  # noqa: ANN201
        return self.m.decode(ids, pos, k, v)


@torch.no_grad()
def test_torch_export(model: Student) -> None:
    ids = tokens(1, 16).to(torch.int32)
    k, v = model.empty_cache(1, 64)
    prefill = torch.export.export(PrefillFn(model), (ids, k, v), strict=False).module()
    pos = torch.tensor([16], dtype=torch.int32)
    decode = torch.export.export(DecodeFn(model), (ids[:, :1], pos, k, v), strict=False).module()
    logits, k, v = prefill(ids, k, v)
    assert torch.equal(logits, model.prefill(ids, *model.empty_cache(1, 64))[0])
    nxt = tokens(1, 1, seed=9).to(torch.int32)
    out, k2, _ = decode(nxt, pos, k, v)
    ref = model(torch.cat([ids, nxt], dim=1))[:, 16:]
    assert (out - ref).abs().max() < 1e-4
    assert not torch.equal(k2, k)
    perturbed, _, _ = decode(nxt, pos, k + torch.randn_like(k), v)
    assert (perturbed - out).abs().max() > 1e-3
    later, _, _ = decode(nxt, torch.tensor([20], dtype=torch.int32), k, v)  # a new position, same program
    assert not torch.equal(later, out)

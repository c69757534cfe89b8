"""Weight fake quantization: error bounds, scale shapes, zero points, idempotence, STE, attach/remove."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compiler.planning.params import ArchitectureP, ModuleQuantP
from runtime.model.fakequant import (
    attach_fake_quant, dequantize, quantize, quantize_dequantize, remove_fake_quant,
)
from runtime.model.student import Student

PLAN = Path(__file__).resolve().parents[2] / "generated" / "toy-worker" / "plan.json"


def qat_params() -> dict:
    jobs = {j["id"]: j for j in json.loads(PLAN.read_text())["jobs"]}
    return jobs["qat"]["params"]


def toy_plan() -> list[ModuleQuantP]:
    return [ModuleQuantP.model_validate(q) for q in qat_params()["quantization"]]


def toy_arch() -> ArchitectureP:
    return ArchitectureP.model_validate(qat_params()["training"]["architecture"])


def qp(dtype: str, granularity: str | None = "per_channel", block_size: int | None = None,
       shape: tuple[int, int] = (48, 128)) -> ModuleQuantP:
    fields = {"module": "m", "kind": "linear", "shape": list(shape), "dtype": dtype, "granularity": granularity,
              "block_size": block_size, "source": "test"}
    return ModuleQuantP.model_validate({k: v for k, v in fields.items() if k in ModuleQuantP.model_fields})


def weight(shape: tuple[int, int] = (48, 128), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, generator=g)
    w[3] = 0.0  # an all-zero row must not produce NaN
    return w


def test_int8_per_channel_error_bound() -> None:
    w, q = weight(), qp("int8")
    codes, scale, zp = quantize(w, q)
    assert codes.dtype == torch.int8 and scale.shape == (48, 1) and zp is None
    assert codes.min() >= -128 and codes.max() <= 127
    dq = quantize_dequantize(w, q)
    assert torch.isfinite(dq).all() and dq.shape == w.shape and dq.dtype == w.dtype
    assert ((w - dq).abs() <= scale / 2 + 1e-7).all()
    assert torch.allclose(scale.squeeze(1), w.abs().amax(1) / 127, rtol=0, atol=1e-12)
    assert torch.equal(dequantize(codes, scale, zp), dq)


def test_int4_per_block_scales() -> None:
    w, q = weight(), qp("int4", "per_block", 32)
    codes, scale, _ = quantize(w, q)
    assert scale.shape == (48, 128 // 32)
    assert codes.min() >= -8 and codes.max() <= 7
    dq = quantize_dequantize(w, q)
    blocks = scale.repeat_interleave(32, dim=1)
    assert ((w - dq).abs() <= blocks / 2 + 1e-7).all()
    assert torch.equal(dequantize(codes, scale, None), dq)
    assert len(torch.unique(dq[0, :32])) <= 16


def test_per_tensor_single_scale() -> None:
    w, q = weight(), qp("int8", "per_tensor")
    codes, scale, _ = quantize(w, q)
    assert scale.shape == (1, 1)
    assert torch.equal(dequantize(codes, scale, None), quantize_dequantize(w, q))


@pytest.mark.parametrize("dtype,qmax,block", [("uint8", 255, None), ("uint4", 15, 64)])
def test_unsigned_zero_points(dtype: str, qmax: int, block: int | None) -> None:
    w = weight() + 0.3  # skewed rows, so zero points differ from the midpoint
    w[5] = torch.rand(128) + 1.0  # all positive: the zero point is 0
    q = qp(dtype, "per_block" if block else "per_channel", block)
    block = block or 128
    codes, scale, zp = quantize(w, q)
    assert codes.dtype == torch.uint8 and zp is not None and zp.dtype == torch.uint8
    assert zp.shape == scale.shape == (48, 128 // block)
    assert len(torch.unique(zp)) > 3
    assert int(codes.max()) <= qmax and int(zp.max()) <= qmax
    assert (zp[5] == 0).all()
    dq = quantize_dequantize(w, q)
    assert torch.equal(dequantize(codes, scale, zp), dq)
    assert ((w - dq).abs() <= scale.repeat_interleave(block, dim=1) + 1e-6).all()
    z = torch.zeros(4, 128)
    assert torch.equal(quantize_dequantize(z, qp(dtype, shape=(4, 128))), z)


@pytest.mark.parametrize("dtype,gran,block", [
    ("int8", "per_channel", None), ("int4", "per_block", 32), ("uint8", "per_tensor", None), ("uint4", "per_block", 32),
])
def test_idempotent(dtype: str, gran: str, block: int | None) -> None:
    w, q = weight(seed=1), qp(dtype, gran, block)
    once = quantize_dequantize(w, q)
    twice = quantize_dequantize(once, q)
    assert torch.allclose(twice, once, rtol=1e-6, atol=1e-9)
    assert torch.equal(quantize(once, q)[0], quantize(w, q)[0])


def test_none_is_untouched() -> None:
    w = weight()
    assert quantize_dequantize(w, qp("none", None)) is w


def test_straight_through_gradient() -> None:
    w = weight().requires_grad_(True)
    g = torch.randn_like(w)
    (quantize_dequantize(w, qp("int4", "per_block", 32)) * g).sum().backward()
    assert w.grad is not None and torch.equal(w.grad, g)


def test_attach_and_remove_on_toy_student() -> None:
    plan = toy_plan()
    model = Student(toy_arch(), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids)
    quantized = [q for q in plan if q.dtype != "none"]
    assert attach_fake_quant(model, plan) == len(quantized)
    for q in quantized:
        mod = model.get_submodule(q.module)
        original = mod.parametrizations.weight.original
        assert torch.equal(mod.weight, quantize_dequantize(original, q))
    assert not hasattr(model.embed_tokens, "parametrizations")  # dtype none in the toy plan
    out = model(ids)
    assert not torch.equal(out, ref)
    out.float().pow(2).mean().backward()
    grad = model.get_submodule(quantized[0].module).parametrizations.weight.original.grad
    assert grad is not None and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="already"):
        attach_fake_quant(model, plan)

    assert remove_fake_quant(model, bake=False) == len(quantized)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    attach_fake_quant(model, plan)
    with torch.no_grad():
        fq = model(ids)
    remove_fake_quant(model, bake=True)
    assert set(model.state_dict()) == set(before)
    with torch.no_grad():
        assert torch.equal(model(ids), fq)
    for q in quantized:
        w = model.get_submodule(q.module).weight
        assert torch.allclose(quantize_dequantize(w, q), w, rtol=1e-6, atol=0)


def test_plan_must_resolve() -> None:
    model = Student(toy_arch(), seed=0)
    bad = toy_plan()[1].model_copy(update={"module": "layers.9.self_attn.q_proj"})
    with pytest.raises(KeyError, match="layers.9.self_attn.q_proj"):
        attach_fake_quant(model, [bad])
    no_weight = toy_plan()[1].model_copy(update={"module": "layers.0.self_attn"})
    with pytest.raises(KeyError, match="layers.0.self_attn"):
        attach_fake_quant(model, [no_weight])
    wrong = toy_plan()[1].model_copy(update={"shape": [1, 2]})
    with pytest.raises(ValueError, match="layers.0.self_attn.q_proj"):
        attach_fake_quant(model, [wrong])
    assert not any(hasattr(m, "parametrizations") for m in model.modules())

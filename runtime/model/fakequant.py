"""Weight fake quantization for QAT, driven by the compiler's per-module plan (`ModuleQuantP`).

Signed dtypes (int8, int4) are symmetric: scale = max|w| / qmax, codes = clamp(round(w / scale),
-qmax - 1, qmax). Unsigned dtypes (uint8, uint4) are asymmetric: the group's [min, max] (widened to
include 0, so zero is exact) maps onto [0, qmax] with a rounded integer zero point.

Groups: per_tensor (one scale), per_channel (one per output row, dim 0), per_block (one per row and
block of `block_size` input features). Scales and zero points are always rank 2, shaped
`[rows, blocks]`: per_tensor `[1, 1]`, per_channel `[out, 1]`, per_block `[out, in / block_size]`.

`quantize` and `quantize_dequantize` share one rounding path, so the exported integer weights are
exactly what QAT trained against. Gradients pass straight through (STE).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from compiler.planning.params import ModuleQuantP

BITS = {"int8": 8, "uint8": 8, "int4": 4, "uint4": 4}
TINY = 1e-12  # floor for scales, so an all-zero group quantizes to zeros instead of NaN


def _qrange(dtype: str) -> tuple[int, int]:
    bits = BITS[dtype]
    if dtype.startswith("u"):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _groups(weight: Tensor, q: ModuleQuantP) -> Tensor:
    """The weight as fp32 `[rows, blocks, group]`."""
    w = weight.float().reshape(weight.shape[0], -1)
    out, inp = w.shape
    if q.granularity == "per_tensor":
        return w.reshape(1, 1, out * inp)
    if q.granularity == "per_channel":
        return w.reshape(out, 1, inp)
    if q.granularity == "per_block":
        if not q.block_size or inp % q.block_size:
            raise ValueError(f"{q.module}: {inp} input features are not a multiple of block_size {q.block_size}")
        return w.reshape(out, inp // q.block_size, q.block_size)
    raise ValueError(f"{q.module}: unknown granularity {q.granularity!r}")


@torch.no_grad()
def _codes(weight: Tensor, q: ModuleQuantP) -> tuple[Tensor, Tensor, Tensor | None]:
    """fp32 integer-valued codes `[rows, blocks, group]`, scale and zero point `[rows, blocks, 1]`."""
    if q.dtype not in BITS:
        raise ValueError(f"{q.module}: cannot quantize to dtype {q.dtype!r}")
    g = _groups(weight.detach(), q)
    qmin, qmax = _qrange(q.dtype)
    if qmin < 0:
        scale = (g.abs().amax(-1, keepdim=True) / qmax).clamp_min(TINY)
        return torch.clamp(torch.round(g / scale), qmin, qmax), scale, None
    lo = g.amin(-1, keepdim=True).clamp_max(0.0)
    hi = g.amax(-1, keepdim=True).clamp_min(0.0)
    scale = ((hi - lo) / qmax).clamp_min(TINY)
    zero = torch.clamp(torch.round(-lo / scale), qmin, qmax)
    return torch.clamp(torch.round(g / scale) + zero, qmin, qmax), scale, zero


def quantize(weight: Tensor, q: ModuleQuantP) -> tuple[Tensor, Tensor, Tensor | None]:
    """(codes shaped like weight: int8 for signed, uint8 for unsigned; scale fp32 `[rows, blocks]`;
    zero point uint8 `[rows, blocks]` for unsigned dtypes, else None)."""
    codes, scale, zero = _codes(weight, q)
    int_dtype = torch.uint8 if q.dtype.startswith("u") else torch.int8
    out = codes.reshape(weight.shape).to(int_dtype)
    return out, scale.squeeze(-1), None if zero is None else zero.squeeze(-1).to(torch.uint8)


def dequantize(codes: Tensor, scale: Tensor, zero_point: Tensor | None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of `quantize`: (codes - zero_point) * scale, in `dtype`."""
    c = codes.float().reshape(scale.shape[0], scale.shape[1], -1)
    z = zero_point.float()[..., None] if zero_point is not None else 0.0
    return ((c - z) * scale[..., None]).reshape(codes.shape).to(dtype)


def _qdq_values(weight: Tensor, q: ModuleQuantP) -> Tensor:
    codes, scale, zero = _codes(weight, q)
    dq = (codes - zero) * scale if zero is not None else codes * scale
    return dq.reshape(weight.shape).to(weight.dtype)


def quantize_dequantize(weight: Tensor, q: ModuleQuantP) -> Tensor:
    """Fake-quantized weight (same shape and dtype); dtype 'none' returns it unchanged.

    The gradient with respect to `weight` is the identity (straight-through estimator)."""
    if q.dtype == "none":
        return weight
    return weight + (_qdq_values(weight, q) - weight).detach()


class FakeQuant(nn.Module):
    """A parametrization that fake-quantizes the weight it is registered on."""

    def __init__(self, q: ModuleQuantP) -> None:
        super().__init__()
        self.q = q

    def forward(self, weight: Tensor) -> Tensor:
        return quantize_dequantize(weight, self.q)


def _resolve(model: nn.Module, q: ModuleQuantP) -> nn.Module:
    modules = dict(model.named_modules())
    module = modules.get(q.module)
    if module is None:
        raise KeyError(f"quantization plan module {q.module!r} is not a module of the model")
    if "weight" not in module._parameters and not parametrize.is_parametrized(module, "weight"):
        raise KeyError(f"quantization plan module {q.module!r} has no weight parameter")
    shape = list(module.weight.shape)
    if shape != list(q.shape):
        raise ValueError(f"quantization plan module {q.module!r}: plan shape {q.shape} != weight shape {shape}")
    return module


def attach_fake_quant(model: nn.Module, plan: Sequence[ModuleQuantP]) -> int:
    """Fake-quantize every planned module's weight (dtype 'none' is left alone); returns the count.

    Every plan entry must name exactly one module with a weight of the planned shape."""
    seen: set[str] = set()
    resolved = []
    for q in plan:
        if q.module in seen:
            raise ValueError(f"quantization plan lists module {q.module!r} twice")
        seen.add(q.module)
        resolved.append((_resolve(model, q), q))
    count = 0
    for module, q in resolved:
        if q.dtype == "none":
            continue
        if parametrize.is_parametrized(module, "weight") and any(
                isinstance(p, FakeQuant) for p in module.parametrizations["weight"]):
            raise ValueError(f"module {q.module!r} already has fake quantization attached")
        parametrize.register_parametrization(module, "weight", FakeQuant(q))
        count += 1
    return count


def remove_fake_quant(model: nn.Module, bake: bool) -> int:
    """Remove the fake quantization; bake=True leaves the dequantized values in the weights."""
    count = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and any(
                isinstance(p, FakeQuant) for p in module.parametrizations["weight"]):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=bake)
            count += 1
    return count

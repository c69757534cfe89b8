"""Weight compression exactly per the resolved plan: one config per planned weight, nothing else.

Each plan entry names a canonical module; its weight is the exported program's parameter
`model.<module>.weight`, lifted as placeholder `p_model_<...>_weight`, which coremltools turns
into a const of that name (`..._to_fp16` once cast to fp16). The resolution must find exactly one
const per plan entry; the compressed program is then checked to hold a dequantizing op for every
planned weight and for nothing else (masks, RoPE tables and other constants stay as they are).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import coremltools as ct
import coremltools.optimize as cto
from coremltools.converters.mil.mil.types import builtin_to_string
from torch.export import ExportedProgram

from compiler.planning.params import ModuleQuantP

from .scopes import canonical_module

MODES = {"int8": "linear_symmetric", "int4": "linear_symmetric", "uint8": "linear", "uint4": "linear"}
DEQUANT_OPS = ("constexpr_blockwise_shift_scale", "constexpr_affine_dequantize")
CAST_SUFFIXES = ("", "_to_fp16", "_to_fp32")


class QuantizationError(RuntimeError):
    """The plan and the program disagree; the message names the module."""


def _consts(prog: Any) -> dict[str, Any]:
    return {op.name: op for f in prog.functions.values() for op in f.find_ops(op_type="const")}


def weight_consts(ep: ExportedProgram, prog: Any, plan: list[ModuleQuantP]) -> dict[str, str]:
    """module -> the const op name holding its weight; exactly one per plan entry or an error."""
    args = {canonical_module(target.removesuffix(".weight")): arg
            for arg, target in ep.graph_signature.inputs_to_parameters.items() if target.endswith(".weight")}
    consts = _consts(prog)
    out: dict[str, str] = {}
    for q in plan:
        arg = args.get(q.module)
        if arg is None:
            raise QuantizationError(f"plan module {q.module!r} has no weight parameter in the exported program")
        found = [arg + s for s in CAST_SUFFIXES if arg + s in consts]
        shapes = [list(consts[n].outputs[0].shape) for n in found]
        if len(found) != 1 or shapes[0] != list(q.shape):
            raise QuantizationError(f"plan module {q.module!r}: expected exactly one weight const {arg!r} of shape {q.shape}, "
                                    f"found {list(zip(found, shapes))}")
        out[q.module] = found[0]
    return out


def op_config(q: ModuleQuantP) -> cto.coreml.OpLinearQuantizerConfig:
    if q.dtype not in MODES:
        raise QuantizationError(f"plan module {q.module!r}: dtype {q.dtype!r} has no CoreML linear quantization")
    granularity = q.granularity or "per_tensor"
    kwargs: dict[str, Any] = {"mode": MODES[q.dtype], "dtype": q.dtype, "granularity": granularity, "weight_threshold": 0}
    if granularity == "per_block":
        kwargs["block_size"] = q.block_size
    return cto.coreml.OpLinearQuantizerConfig(**kwargs)


def quantize(model: ct.models.MLModel, names: dict[str, str], plan: list[ModuleQuantP]) -> ct.models.MLModel:
    """Compress exactly the planned weights (dtype 'none' stays dense)."""
    configs = {names[q.module]: op_config(q) for q in plan if q.dtype != "none"}
    if not configs:
        return model
    config = cto.coreml.OptimizationConfig(global_config=None, op_name_configs=configs)
    return cto.coreml.linear_quantize_weights(model, config)


def compressed_weights(prog: Any, names: dict[str, str], plan: list[ModuleQuantP]) -> dict[str, dict[str, Any]]:
    """Per planned module: the dequantizing op found for its weight (or none); checks the plan.

    Raises when a planned weight is not compressed as planned or anything else is compressed."""
    by_const = {v: k for k, v in names.items()}
    found: dict[str, dict[str, Any]] = {}
    others: list[str] = []
    for f in prog.functions.values():
        for op in f.operations:
            if op.op_type not in DEQUANT_OPS:
                continue
            source = _source_const(op.name, by_const)
            if source is None:
                others.append(op.name)
                continue
            data = op.inputs.get("data")
            scale = op.inputs.get("scale")
            found[by_const[source]] = {"op": op.op_type, "name": op.name,
                                       "dtype": builtin_to_string(data.dtype) if data is not None else None,
                                       "scale_shape": list(scale.shape) if scale is not None else None}
    if others:
        raise QuantizationError(f"compressed constants that are not planned weights: {sorted(others)}")
    for q in plan:
        _check_entry(q, found.get(q.module))
    return {q.module: found.get(q.module, {"op": None}) for q in plan}


def _source_const(op_name: str, by_const: dict[str, str]) -> str | None:
    for const in by_const:
        if op_name == const or op_name.startswith(const + "_"):
            return const
    return None


def _check_entry(q: ModuleQuantP, got: dict[str, Any] | None) -> None:
    if q.dtype == "none":
        if got is not None:
            raise QuantizationError(f"plan module {q.module!r} is dtype none but its weight was compressed ({got['op']})")
        return
    if got is None:
        raise QuantizationError(f"plan module {q.module!r} ({q.dtype}, {q.granularity}) was not compressed")
    if got["dtype"] != q.dtype:
        raise QuantizationError(f"plan module {q.module!r}: weight stored as {got['dtype']}, plan says {q.dtype}")
    out, inp = q.shape[0], q.shape[1]
    expected = {"per_tensor": [1, 1], "per_channel": [out, 1],
                "per_block": [out, inp // q.block_size] if q.block_size else None}.get(q.granularity or "per_tensor")
    if got["scale_shape"] is not None and expected is not None and got["scale_shape"] != expected:
        raise QuantizationError(f"plan module {q.module!r}: scale shape {got['scale_shape']}, plan's "
                                f"{q.granularity} (block {q.block_size}) needs {expected}")


def count_dequant_ops(prog: Any) -> dict[str, int]:
    return dict(Counter(op.op_type for f in prog.functions.values() for op in f.operations if op.op_type in DEQUANT_OPS))

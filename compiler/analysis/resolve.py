"""Resolve the quantization recipe and the precision islands against canonical modules.

Pure functions from the validated spec to per-module plans; the compiler's rules, the
contract files, the derived sizes and (later) the runtime's QAT and converter all read these.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.analysis.modules import Module, canonical_modules, matches
from compiler.schema.quantization import BITS, Dense
from compiler.schema.spec import Spec

DTYPE_BYTES = {"fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class ModuleQuant:
    module: str
    kind: str
    shape: tuple[int, ...]
    dtype: str  # none | int8 | uint8 | int4 | uint4
    granularity: str | None
    block_size: int | None
    source: str  # "quantization.weights.rules[i]" or "quantization.weights.default"

    def scale_count(self) -> int:
        out, inp = self.shape[0], self.shape[-1]
        if self.granularity == "per_tensor":
            return 1
        if self.granularity == "per_channel":
            return out
        if self.granularity == "per_block":  # a missing block_size is reported by the rules
            return out * (inp // self.block_size) if self.block_size else out
        return 0

    def weight_bytes(self, compute: str) -> int:
        params = 1
        for d in self.shape:
            params *= d
        if self.dtype == "none":
            return params * DTYPE_BYTES[compute]
        bits = BITS[self.dtype]
        data = (params * bits + 7) // 8
        scales = self.scale_count() * DTYPE_BYTES[compute]
        zero_points = (self.scale_count() * bits + 7) // 8 if self.dtype.startswith("u") else 0
        return data + scales + zero_points


def quant_plan(spec: Spec, modules: list[Module] | None = None) -> list[ModuleQuant]:
    modules = modules if modules is not None else canonical_modules(spec.architecture)
    weights = spec.quantization.weights
    out = []
    for m in modules:
        if not m.quantizable:
            continue
        recipe, source = weights.default, "quantization.weights.default"
        for i, rule in enumerate(weights.rules):
            if matches(rule.match, m.name):
                recipe, source = rule, f"quantization.weights.rules[{i}]"
                break
        if isinstance(recipe, Dense):
            out.append(ModuleQuant(m.name, m.kind, m.shape, "none", None, None, source))
        else:
            out.append(ModuleQuant(m.name, m.kind, m.shape, recipe.dtype, recipe.granularity, recipe.block_size, source))
    return out


@dataclass(frozen=True)
class PrecisionPlan:
    compute: str
    island_modules: dict[str, list[str]]  # pattern -> matched modules
    island_ops: list[str]
    reasons: dict[str, str]

    def module_precision(self, name: str) -> str:
        for matched in self.island_modules.values():
            if name in matched:
                return "fp32"
        return self.compute


def precision_plan(spec: Spec, modules: list[Module] | None = None) -> PrecisionPlan:
    modules = modules if modules is not None else canonical_modules(spec.architecture)
    island_modules: dict[str, list[str]] = {}
    ops: list[str] = []
    reasons: dict[str, str] = {}
    for island in spec.precision.islands:
        if hasattr(island, "module"):
            island_modules[island.module] = [m.name for m in modules if matches(island.module, m.name)]
            reasons[f"module:{island.module}"] = island.reason
        else:
            ops.append(island.op)
            reasons[f"op:{island.op}"] = island.reason
    return PrecisionPlan(spec.precision.compute, island_modules, sorted(set(ops)), reasons)

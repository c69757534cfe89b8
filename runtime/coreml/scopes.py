"""Which canonical module a MIL op came from, and the fp16/fp32 decision for every op.

torch.export records each node's module path in `nn_module_stack` ("model.layers.0.input_layernorm"
under the export wrapper's `model` attribute), but coremltools carries only two scopes onto MIL
ops: the node's stack trace and its `debug_handle`. Before conversion every call_function node
gets a fresh integer debug handle; the handle -> canonical module table built at the same time
then maps each MIL op (including the helper ops a node's conversion emits) back to its module.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from coremltools.converters.mil.mil.scope import ScopeSource
from torch.export import ExportedProgram

WRAPPER_ATTRIBUTE = "model"  # runtime.export.wrappers keeps the Student here
# Always fp32, whatever the spec says: the RoPE angle computation (runtime/model/student.py
# RotaryEmbedding). Its cos/sin outputs are in [-1, 1] and cross into fp16 at the boundary.
BUILTIN_FP32_MODULES = ("rotary_emb",)


def canonical_module(path: str) -> str:
    """`model.layers.0.mlp.up_proj` -> `layers.0.mlp.up_proj`; the wrapper itself -> ''."""
    prefix = WRAPPER_ATTRIBUTE + "."
    if path == WRAPPER_ATTRIBUTE:
        return ""
    return path[len(prefix):] if path.startswith(prefix) else path


def tag_modules(ep: ExportedProgram) -> dict[int, str]:
    """Give every call_function node a debug handle; returns handle -> innermost canonical module."""
    table: dict[int, str] = {}
    for handle, node in enumerate(n for n in ep.graph.nodes if n.op == "call_function"):
        node.meta["debug_handle"] = handle
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        table[handle] = canonical_module(path)
    return table


def op_module(op: Any, table: dict[int, str]) -> str | None:
    """The canonical module of a MIL op, '' for wrapper-level ops, None when it has no handle."""
    handles = op.scopes.get(ScopeSource.EXIR_DEBUG_HANDLE) or []
    for h in handles:
        if h is not None:
            return table.get(h)
    return None


def in_island(module: str | None, islands: list[str]) -> str | None:
    """The island module containing `module` (itself or an ancestor), else None."""
    if not module:
        return None
    for island in islands:
        if module == island or module.startswith(island + "."):
            return island
    return None


@dataclass
class PrecisionSelector:
    """`FP16ComputePrecision(op_selector=...)`: True casts an op to fp16, False keeps it fp32."""

    table: dict[int, str]
    island_modules: list[str]
    island_ops: list[str]
    kept_fp32: list[dict[str, str]] = field(default_factory=list)
    fp16_ops: Counter = field(default_factory=Counter)

    def __call__(self, op: Any) -> bool:
        if op.op_type == "const":
            return True
        module = op_module(op, self.table)
        island = in_island(module, [*self.island_modules, *BUILTIN_FP32_MODULES])
        if island is not None or op.op_type in self.island_ops:
            self.kept_fp32.append({"op": op.name, "type": op.op_type, "module": module or "",
                                   "reason": f"module:{island}" if island is not None else f"op:{op.op_type}"})
            return False
        self.fp16_ops[op.op_type] += 1
        return True

    def summary(self) -> dict[str, Any]:
        by_reason = Counter(k["reason"] for k in self.kept_fp32)
        return {"fp32_ops": len(self.kept_fp32), "fp32_by_reason": dict(sorted(by_reason.items())),
                "fp16_ops": sum(self.fp16_ops.values())}

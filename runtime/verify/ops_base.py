"""The op registry of the numpy MIL interpreter: `Args` (an op's resolved inputs with MIL's
defaults), `OPS` (op type -> implementation), dtype names and the checked integer cast.

Implementations live in `ops_math` and `ops_tensor`; `mil_ops` imports them all. Every op
follows its definition in coremltools 9.0 (`coremltools/converters/mil/mil/ops/defs/iOS15..iOS18`):
parameter names, defaults, broadcasting and edge rules are theirs. Floating values compute in
float32; the interpreter casts each result to the op's declared output type. Where MIL leaves
behaviour undefined (out-of-range gather indices, integer casts that overflow), an op raises
`OpError` instead of guessing what the device would do. Which opset's definition each op follows,
and the conformance suite run on coremltools' own op tests (tests/verify/test_mil_conformance.py):
docs/verify.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

INT32_MAX = int(np.iinfo(np.int32).max)
NP_DTYPES: dict[str, Any] = {
    "fp16": np.float32, "fp32": np.float32, "fp64": np.float32, "bf16": np.float32,  # floats compute in fp32
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_,
    "int4": np.int8, "uint1": np.uint8, "uint2": np.uint8, "uint3": np.uint8, "uint4": np.uint8, "uint6": np.uint8,
}
FLOAT_DTYPES = frozenset({"fp16", "fp32", "fp64", "bf16"})


class OpError(Exception):
    """An op cannot be executed as MIL defines it (bad parameters, or behaviour MIL leaves undefined)."""


@dataclass
class Args:
    """An op's resolved inputs: parameter -> list of values (one per binding; tuples have several)."""

    op_type: str
    name: str
    values: dict[str, list[Any]]
    opset: int = 8  # CoreML<N>: 5 = iOS15 ... 8 = iOS18
    out_dtypes: list[str] = field(default_factory=list)

    def has(self, key: str) -> bool:
        return key in self.values

    def __getitem__(self, key: str) -> Any:
        if key not in self.values:
            raise OpError(f"{self.op_type} {self.name!r}: required input {key!r} is missing")
        vals = self.values[key]
        if len(vals) != 1:
            raise OpError(f"{self.op_type} {self.name!r}: input {key!r} takes one value, got {len(vals)}")
        return vals[0]

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self.values else default

    def many(self, key: str) -> list[Any]:
        if key not in self.values:
            raise OpError(f"{self.op_type} {self.name!r}: required input {key!r} is missing")
        return self.values[key]

    def integer(self, key: str, default: int | None = None) -> int:
        v = self.get(key, default)
        if v is None:
            raise OpError(f"{self.op_type} {self.name!r}: required input {key!r} is missing")
        return int(np.asarray(v).reshape(()))

    def flag(self, key: str, default: bool = False) -> bool:
        return bool(np.asarray(self.get(key, default)).reshape(()))

    def ints(self, key: str, default: list[int] | None = None) -> list[int]:
        v = self.get(key, default)
        if v is None:
            raise OpError(f"{self.op_type} {self.name!r}: required input {key!r} is missing")
        return [int(i) for i in np.asarray(v).reshape(-1)]

    def bools(self, key: str, rank: int) -> list[bool]:
        v = self.get(key)
        return [False] * rank if v is None else [bool(b) for b in np.asarray(v).reshape(-1)]

    def fail(self, message: str) -> OpError:
        return OpError(f"{self.op_type} {self.name!r}: {message}")


Op = Callable[[Args], Any]
OPS: dict[str, Op] = {}


def op(*names: str) -> Callable[[Op], Op]:
    def register(fn: Op) -> Op:
        for n in names:
            OPS[n] = fn
        return fn
    return register


def f32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def axis_index(axis: int, rank: int, a: Args) -> int:
    if not -rank <= axis < max(rank, 1):
        raise a.fail(f"axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def cast_to(x: np.ndarray, dtype: str, a: Args) -> np.ndarray:
    """`x` as MIL `dtype`; floats stay float32 (rounding is the interpreter's business)."""
    if dtype not in NP_DTYPES:
        raise a.fail(f"unknown dtype {dtype!r}")
    target = np.dtype(NP_DTYPES[dtype])
    if target.kind in "iu" and x.dtype.kind in "fiu" and x.size:
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise a.fail(f"casting non-finite values to {dtype} is undefined")
        info = np.iinfo(target)
        lo, hi = (float(np.min(x)), float(np.max(x)))
        if lo < info.min or hi > info.max:
            raise a.fail(f"values in [{lo:g}, {hi:g}] overflow {dtype}; the device result is undefined")
        if x.dtype.kind == "f":
            x = np.trunc(x)
    return x.astype(target)

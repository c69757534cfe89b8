"""A reference interpreter for CoreML ML programs in numpy: run a converted .mlpackage on Linux
(where CoreML cannot predict) and compare it with torch.

Two modes:
  * reference (`fp16=False`): every floating value is computed and kept in float32, fp16 casts
    and fp16 storage included. It measures conversion fidelity: does the program compute the
    function torch computes, with the package's own (dequantized) weights?
  * fp16-storage emulation (`fp16=True`): each op still computes in float32, but an output the
    program declares fp16 is rounded to fp16 (overflowing to inf) as the device stores it, and
    so are fp16 inputs and states; fp32 ops (precision islands) stay fp32. It approximates the
    device's numerics; it is not bit-exact (the device may accumulate in fp16, fuse ops, ...).

Every op output is checked against its declared shape and cast to its declared type, so a
program that does not type-check fails loudly instead of drifting. An op type the interpreter
does not implement makes `run` raise `UnsupportedOp` before anything executes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .blobs import BlobError
from .mil_ops import CONSTEXPR, NP_DTYPES, OPS, Args, OpError, cast_to
from .ops_tensor import slice_update_into
from .program import (Function, ProgramError, TensorDesc, WeightFiles, op_reads, decode_value, load_model, model_file,
                      op_name, tensor_desc)

__all__ = ["BlobError", "Interpreter", "ProgramError", "RunResult", "UnsupportedOp", "constants", "dequantized_weights"]
# coreml_update_state is saved as write_state + read_state (coremltools backend/mil/load.py).
STATE_OPS = frozenset({"read_state", "write_state"})
KNOWN = frozenset(OPS) | STATE_OPS | {"const"}


class UnsupportedOp(Exception):
    """The program uses op types this interpreter does not implement (named with their ops)."""


@dataclass
class RunResult:
    """Outputs and states after one call (fp16 arrays for fp16 values in fp16 emulation, else
    float32), and `op_type:op_name` of every op whose output held inf or NaN, in program order."""

    outputs: dict[str, np.ndarray]
    states: dict[str, np.ndarray]
    nonfinite: list[str] = field(default_factory=list)
    peak_live_bytes: int = 0  # the most bytes of values held at once during the run (inputs, states, live values)


def _nbytes(value: Any) -> int:
    return int(getattr(value, "nbytes", 0))


def _nonfinite(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind == "f" and not bool(np.isfinite(value).all())


# Constants (weights, dequantized) kept between runs, in MiB: the rest are read from the memory-mapped
# weight file and dequantized again at each use. A 1.1B package's dequantized weights take 4.1 GiB and
# all fit: a cached decode step takes ~1 s there, one that dequantizes the model again ~7 s
# (bench/results/verify_1b.json). Larger models keep what fits; memory stays working set + budget.
CONST_CACHE_MB = 8192


class Interpreter:
    """Runs a package's functions. Memory: the weight files are memory-mapped; a run holds its
    live values only (each is dropped after the last op that reads it) plus at most `cache_mb`
    of constants kept from earlier runs (the first that fit, in program order: cyclic access
    would make a least-recently-used cache miss every time)."""

    def __init__(self, package: Path, *, fp16: bool = False, cache_mb: float = CONST_CACHE_MB):
        self.package = Path(package)
        self.fp16 = fp16
        self.cache_bytes = int(cache_mb * 2 ** 20)
        self._cached_bytes = 0
        path = model_file(self.package)
        self.spec = load_model(path)
        self._weights = WeightFiles(path.parent)
        self._functions = {name: Function.parse(name, fn) for name, fn in self.spec.mlProgram.functions.items()}
        if not self._functions:
            raise ProgramError(f"{self.package}: the ML program has no functions")
        self.functions: list[str] = sorted(self._functions)
        default = self.spec.description.defaultFunctionName
        self.default_function: str = default or ("main" if "main" in self._functions else self.functions[0])
        self._consts: dict[Any, list[tuple[Any, bool]]] = {}  # Function.const_keys -> outputs

    def function(self, name: str) -> Function:
        if name not in self._functions:
            raise ValueError(f"{self.package.name} has no function {name!r}; it has {self.functions}")
        return self._functions[name]

    def unsupported_ops(self, function: str) -> list[str]:
        return sorted(t for t in self.function(function).op_types() if t not in KNOWN)

    def _check_supported(self, fn: Function) -> None:
        types = fn.op_types()
        missing = sorted(t for t in types if t not in KNOWN)
        if missing:
            detail = "; ".join(f"{t} (ops {', '.join(types[t][:5])}{', ...' if len(types[t]) > 5 else ''})" for t in missing)
            raise UnsupportedOp(f"function {fn.name!r} of {self.package.name} uses op types the reference interpreter "
                                f"does not implement: {detail}. Add them to runtime/verify/mil_ops.py (per the MIL op "
                                f"definitions) or change the conversion so it does not emit them.")

    # --- values ---------------------------------------------------------------------------------

    def _store(self, value: Any, desc: TensorDesc, where: str) -> Any:
        """`value` checked against its declared type: shape, dtype (floats as float32, rounded
        to fp16 in fp16 emulation when declared fp16)."""
        if isinstance(value, str):
            return value
        arr = np.asarray(value)
        if not desc.fits(arr.shape):
            raise ProgramError(f"{where}: computed shape {list(arr.shape)}, the program declares {desc.describe()}")
        if desc.dtype == "string":
            return arr
        if desc.is_float:
            arr = arr.astype(np.float32, copy=False)
            if self.fp16 and desc.dtype == "fp16":
                with np.errstate(over="ignore"):
                    arr = arr.astype(np.float16).astype(np.float32)
            return arr
        if arr.dtype.kind == "b" and desc.dtype != "bool":
            arr = arr.astype(np.int32)
        try:
            return cast_to(arr, desc.dtype, Args("store", where, {}))
        except OpError as e:
            raise ProgramError(str(e)) from e

    def _export(self, value: np.ndarray, desc: TensorDesc) -> np.ndarray:
        return value.astype(np.float16) if self.fp16 and desc.dtype == "fp16" else np.array(value, copy=True)

    def _inputs(self, fn: Function, given: dict[str, np.ndarray], declared: dict[str, TensorDesc], what: str) -> dict[str, Any]:
        missing, extra = sorted(set(declared) - set(given)), sorted(set(given) - set(declared))
        if missing or extra:
            raise ValueError(f"function {fn.name!r}: {what} missing {missing}, unexpected {extra}; "
                             f"it takes {what} {sorted(declared)}")
        out = {}
        for name, desc in declared.items():
            arr = np.asarray(given[name])
            if not desc.fits(arr.shape):
                raise ValueError(f"function {fn.name!r}: {what[:-1]} {name!r} has shape {list(arr.shape)}, "
                                 f"expected {desc.describe()}")
            if desc.is_float != (arr.dtype.kind == "f"):
                raise ValueError(f"function {fn.name!r}: {what[:-1]} {name!r} is {arr.dtype}, expected {desc.dtype}")
            try:
                out[name] = self._store(arr, desc, f"{what[:-1]} {name!r}")
            except OpError as e:
                raise ValueError(f"function {fn.name!r}: {what[:-1]} {name!r}: {e}") from e
        return out

    def _const(self, fn: Function, index: int, op: Any, env: dict[str, Any]) -> list[tuple[Any, bool]]:
        """A const's or constexpr's outputs (and whether each is non-finite), kept for later runs
        while the cache has room."""
        key = fn.const_keys().get(index, (fn.name, index))
        if key in self._consts:
            return self._consts[key]
        where = f"function {fn.name!r} {op.type} {op_name(op)!r}"
        if op.type == "const":
            results = [decode_value(op.attributes["val"], self._weights, where)]
        else:
            results = self._compute(fn, op, env, where)
        stored = [self._store(v, tensor_desc(o.type, where), where) for v, o in zip(results, op.outputs)]
        out = [(v, _nonfinite(v)) for v in stored]
        size = sum(_nbytes(v) for v in stored)
        if self._cached_bytes + size <= self.cache_bytes:
            self._consts[key] = out
            self._cached_bytes += size
        return out

    def _args(self, fn: Function, op: Any, env: dict[str, Any], where: str) -> Args:
        values: dict[str, list[Any]] = {}
        if op.type.startswith("constexpr_"):
            # coremltools writes the parameters of constexpr ops of opset iOS16/iOS17 (e.g.
            # constexpr_affine_dequantize) as attributes, and those of iOS18 ones as inputs
            for key, value in op.attributes.items():
                if key != "name":
                    if key in op.inputs:
                        raise ProgramError(f"{where}: parameter {key!r} is both an input and an attribute")
                    values[key] = [decode_value(value, self._weights, f"{where} attribute {key!r}")]
        for param, arg in op.inputs.items():
            vals = []
            for binding in arg.arguments:
                if binding.HasField("value"):
                    vals.append(decode_value(binding.value, self._weights, f"{where} input {param!r}"))
                elif binding.name in env:
                    vals.append(env[binding.name])
                else:
                    raise ProgramError(f"{where}: input {param!r} reads {binding.name!r}, which no earlier op produced")
            values[param] = vals
        return Args(op.type, op_name(op), values, fn.opset)

    def _compute(self, fn: Function, op: Any, env: dict[str, Any], where: str) -> list[Any]:
        args = self._args(fn, op, env, where)
        try:
            with np.errstate(all="ignore"):
                result = OPS[op.type](args)
        except OpError as e:
            raise ProgramError(f"function {fn.name!r}: {e}") from e
        results = list(result) if isinstance(result, tuple) else [result]
        if len(results) != len(op.outputs):
            raise ProgramError(f"{where}: computed {len(results)} outputs, the program declares {len(op.outputs)}")
        return results

    # --- execution -------------------------------------------------------------------------------

    def run(self, function: str, inputs: dict[str, np.ndarray],
            states: dict[str, np.ndarray] | None = None) -> RunResult:
        """Execute `function` once; `states` default to zeros and come back updated."""
        fn = self.function(function)
        self._check_supported(fn)
        env = self._inputs(fn, inputs, fn.inputs, "inputs")
        if states is None:
            states = {n: self._zeros(fn, n) for n in fn.states}
        state = self._inputs(fn, states, fn.states, "states")
        in_place = fn.in_place_updates()
        if in_place:  # the caller's arrays are never written
            state = {k: np.array(v, copy=True) for k, v in state.items()}
        nonfinite: list[str] = []
        last_uses = fn.last_uses()
        live = peak = sum(_nbytes(v) for v in (*env.values(), *state.values()))
        for index, op in enumerate(fn.ops):
            where = f"function {fn.name!r} {op.type} {op_name(op)!r}"
            if op.type == "const" or op.type in CONSTEXPR:
                results = self._const(fn, index, op, env)
                for o, (value, bad) in zip(op.outputs, results):
                    env[o.name] = value
                    if bad:
                        nonfinite.append(f"{op.type}:{op_name(op)}")
            else:
                if index in in_place:  # stored as its type already; checks only what it wrote
                    env[op.outputs[0].name], bad = self._update_in_place(fn, op, env, state, where)
                else:
                    results = self._state_op(fn, op, env, state, where) if op.type in STATE_OPS \
                        else self._compute(fn, op, env, where)
                    for o, value in zip(op.outputs, results):
                        env[o.name] = self._store(value, tensor_desc(o.type, where), f"{where} output {o.name!r}")
                    # a read state was checked when it was written (or is an input)
                    bad = op.type != "read_state" and any(_nonfinite(env[o.name]) for o in op.outputs)
                if bad:
                    nonfinite.append(f"{op.type}:{op_name(op)}")
            live += sum(_nbytes(env.get(o.name)) for o in op.outputs)
            peak = max(peak, live)
            for name in last_uses.get(index, ()):  # nothing later reads these
                live -= _nbytes(env.pop(name, None))
        missing = [n for n in fn.outputs if n not in env]
        if missing:
            raise ProgramError(f"function {fn.name!r}: outputs {missing} are never computed")
        outputs = {n: self._export(env[n], self._output_desc(fn, n)) for n in fn.outputs}
        return RunResult(outputs, {n: self._export(state[n], d) for n, d in fn.states.items()}, nonfinite, peak)

    def _output_desc(self, fn: Function, name: str) -> TensorDesc:
        for op in reversed(fn.ops):
            for o in op.outputs:
                if o.name == name:
                    return tensor_desc(o.type, name)
        return fn.inputs[name]

    def _zeros(self, fn: Function, name: str) -> np.ndarray:
        desc = fn.states[name]
        if desc.unknown_rank or any(d is None for d in desc.shape):
            raise ValueError(f"function {fn.name!r}: state {name!r} has unknown dimensions {desc.describe()}; "
                             f"pass it in `states`")
        return np.zeros([int(d or 0) for d in desc.shape], np.float32 if desc.is_float else NP_DTYPES[desc.dtype])

    def _state_op(self, fn: Function, op: Any, env: dict[str, Any], state: dict[str, Any], where: str) -> list[Any]:
        """read_state gives the state's array; write_state makes `data` the state. No copies: the only
        op that writes into an array it reads is an in-place slice_update, and only where nothing
        else can see that array, so a decode step does not copy its whole KV cache twice."""
        bindings = op.inputs["input"].arguments if "input" in op.inputs else []
        if len(bindings) != 1 or bindings[0].name not in state:
            raise ProgramError(f"{where}: 'input' must name one state of the function ({sorted(state)})")
        name = bindings[0].name
        if op.type == "read_state":
            return [state[name]]
        data = self._args(fn, op, {**env, name: state[name]}, where)["data"]
        if data is not state[name]:  # else an in-place update already wrote it, stored as the state's type
            state[name] = self._store(data, fn.states[name], f"{where} (state {name!r})")
        return []

    def _update_in_place(self, fn: Function, op: Any, env: dict[str, Any], state: dict[str, Any],
                         where: str) -> tuple[np.ndarray, bool]:
        """`slice_update` writing into its input (`Function.in_place_updates`), unless a live value or
        another state may share that memory; the update is stored as the output's type first, so the
        result is what the copying op stores. (result, whether what it wrote holds inf/NaN)."""
        args = self._args(fn, op, env, where)
        desc = tensor_desc(op.outputs[0].type, where)
        x = args["x"]
        x_name = op.inputs["x"].arguments[0].name
        shared = isinstance(x, np.ndarray) and any(
            isinstance(v, np.ndarray) and v is not x and np.may_share_memory(v, x)
            for k, v in (*env.items(), *state.items()) if k != x_name)
        if shared or not isinstance(x, np.ndarray) or not desc.fits(x.shape) or x.dtype != np.float32 \
                or not desc.is_float or not x.flags.writeable:
            out = self._store(self._compute(fn, op, env, where)[0], desc, f"{where} output")
            return out, _nonfinite(out)
        update = self._store(np.asarray(args["update"], dtype=np.float32), TensorDesc(desc.dtype, (), True), where)
        try:
            slice_update_into(x, Args(op.type, op_name(op), {**args.values, "update": [update]}, fn.opset))
        except OpError as e:
            raise ProgramError(f"function {fn.name!r}: {e}") from e
        return x, _nonfinite(update)  # the rest of x was checked when it was written

    def close(self) -> None:
        """Drop the constant cache and unmap the weight files (arrays already returned stay valid: they
        are copies)."""
        self._consts.clear()
        self._cached_bytes = 0
        self._weights.close()

    def __enter__(self) -> Interpreter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def constants(interp: Interpreter, function: str, wanted: set[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(output name, value) of the const and constexpr ops of `function` whose outputs are in `wanted`,
    in program order, computing only them and what they read; each value is handed over and
    dropped, so one weight (and its quantized parts) is in memory at a time, never the model."""
    fn = interp.function(function)
    needed = set(wanted)
    for op in reversed(fn.ops):
        if op.type in CONSTEXPR and any(o.name in needed for o in op.outputs):
            needed.update(op_reads(op))
    readers: dict[str, int] = {}
    for index, op in enumerate(fn.ops):
        if op.type in CONSTEXPR and any(o.name in needed for o in op.outputs):
            for name in op_reads(op):
                readers[name] = index
    env: dict[str, Any] = {}
    for index, op in enumerate(fn.ops):
        if not any(o.name in needed for o in op.outputs):
            continue
        if op.type != "const" and op.type not in CONSTEXPR:
            raise UnsupportedOp(f"function {function!r}: {op.type} {op_name(op)!r} is not implemented")
        for o, (value, _) in zip(op.outputs, interp._const(fn, index, op, env)):
            if o.name in readers:
                env[o.name] = value
            if o.name in wanted:
                yield o.name, np.asarray(value, dtype=np.float32)
        for name in [n for n, last in readers.items() if last == index]:
            env.pop(name, None)


def dequantized_weights(package: Path) -> dict[str, np.ndarray]:
    """Output name of every constexpr_* op in any function -> its dense float32 value (reference
    mode), the same value in every function that has it. Holds them all: for tests and small
    packages; `constants` streams them."""
    interp = Interpreter(package, cache_mb=0)
    out: dict[str, np.ndarray] = {}
    try:
        for name in interp.functions:
            fn = interp.function(name)
            unknown = [op for op in fn.ops if op.type.startswith("constexpr_") and op.type not in CONSTEXPR]
            if unknown:
                raise UnsupportedOp(f"function {name!r}: {unknown[0].type} {op_name(unknown[0])!r} is not implemented")
            wanted = {o.name for op in fn.ops if op.type in CONSTEXPR for o in op.outputs}
            for key, value in constants(interp, name, wanted):
                if key in out and not np.array_equal(out[key], value):
                    raise ProgramError(f"constexpr output {key!r} differs between functions")
                out[key] = value
    finally:
        interp.close()
    return dict(sorted(out.items()))

"""Check an exported program's signature (see `program.describe`) against its contract function.

Every mismatch is reported at once, each naming the function, the tensor, what the contract
expects and what the program has. Inputs are matched by name and order; outputs by position (a
program's outputs are positional, the contract names them); states by name. A contract state
the program never writes shows up as a constant buffer, the signature of a decode that ignores
its cache, and is an error.
"""

from __future__ import annotations

from typing import Any

from compiler.planning.params import FunctionP, TensorP


class ContractError(RuntimeError):
    """The exported program does not match contracts/io.json."""

    def __init__(self, function: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"exported program for function {function!r} does not match contracts/io.json:\n{lines}")


def _fmt(dtype: str, shape: list[Any]) -> str:
    return f"{dtype} {shape}"


def _compare(where: str, want: TensorP, got: dict[str, Any], symbols: dict[str, str], problems: list[str]) -> None:
    """Dtype and shape of one tensor; `symbols` maps contract dim names to program symbols."""
    expected, observed = _fmt(want.dtype, want.shape), _fmt(got["dtype"], got["shape"])
    ok = got["dtype"] == want.dtype and len(got["shape"]) == len(want.shape)
    for axis, (w, g) in enumerate(zip(want.shape, got["shape"])):
        if isinstance(w, int):
            ok = ok and g == w
        elif not isinstance(g, str):
            ok = False
        elif w in symbols:
            ok = ok and symbols[w] == g
        else:
            symbols[w] = g
            _check_range(where, want, axis, got, problems)
    if not ok:
        problems.append(f"{where}: expected {expected}, observed {observed}")


def _check_range(where: str, want: TensorP, axis: int, got: dict[str, Any], problems: list[str]) -> None:
    """A symbolic dimension must accept every enumerated size of the contract."""
    sizes = sorted({s[axis] for s in want.enumerated_shapes or []})
    lo, hi = got.get("ranges", {}).get(got["shape"][axis], [None, None])
    if not sizes or lo is None or sizes[0] < lo or sizes[-1] > hi:
        problems.append(f"{where}: dimension {axis} ({want.shape[axis]}) accepts [{lo}, {hi}] but the contract "
                        f"enumerates {sizes}")


def check_contract(desc: dict[str, Any], fn: FunctionP) -> list[str]:
    """Problems (empty when the program matches), one line each."""
    problems: list[str] = []
    prefix = f"function {fn.name!r}"
    symbols: dict[str, str] = {}
    want_in, got_in = [t.name for t in fn.inputs], [t["name"] for t in desc["inputs"]]
    if want_in != got_in:
        problems.append(f"{prefix}: inputs expected {want_in}, observed {got_in}")
    for want, got in zip(fn.inputs, desc["inputs"]):
        _compare(f"{prefix}: input {want.name!r}", want, got, symbols, problems)
    if len(fn.outputs) != len(desc["outputs"]):
        problems.append(f"{prefix}: expected {len(fn.outputs)} outputs {[t.name for t in fn.outputs]}, "
                        f"observed {len(desc['outputs'])}")
    for want, got in zip(fn.outputs, desc["outputs"]):
        if "dtype" not in got:
            problems.append(f"{prefix}: output {want.name!r} is a {got.get('kind')}, not a user output")
            continue
        _compare(f"{prefix}: output {want.name!r} (program output {got['name']!r})", want, got, symbols, problems)
    states = {s["name"]: s for s in desc["states"]}
    for want in fn.states:
        if want.name in desc["constant_buffers"]:
            problems.append(f"{prefix}: state {want.name!r} is never written by the program (a constant buffer)")
        elif want.name not in states:
            problems.append(f"{prefix}: state {want.name!r} expected {_fmt(want.dtype, want.shape)}, observed no such buffer")
        else:
            _compare(f"{prefix}: state {want.name!r}", want, states[want.name], symbols, problems)
    extra = sorted(set(states) - {t.name for t in fn.states})
    if extra:
        problems.append(f"{prefix}: buffers {extra} are mutated by the program but are not contract states")
    stray = sorted(set(desc["constant_buffers"]) - {t.name for t in fn.states})
    if stray:
        problems.append(f"{prefix}: buffers {stray} are not in the contract")
    return problems


def require_contract(desc: dict[str, Any], fn: FunctionP) -> None:
    problems = check_contract(desc, fn)
    if problems:
        raise ContractError(fn.name, problems)

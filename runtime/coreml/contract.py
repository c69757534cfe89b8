"""Check a saved package's functions against the contract functions it was converted from.

A light self-check of the convert job (the verify job owns the full one): function names, the
default function, and every input, output and state by name, dtype and shape (enumerated
shapes included). Output shapes are compared when the package records them.
"""

from __future__ import annotations

from typing import Any

from compiler.planning.params import FunctionP, TensorP


def _tensor_problems(where: str, want: TensorP, got: dict[str, Any] | None, is_output: bool) -> list[str]:
    if got is None:
        return [f"{where}: missing"]
    problems = []
    if got["dtype"] != want.dtype:
        problems.append(f"{where}: dtype {got['dtype']}, contract {want.dtype}")
    if want.enumerated_shapes:
        if got.get("enumerated_shapes") != [list(s) for s in want.enumerated_shapes]:
            problems.append(f"{where}: enumerated shapes {got.get('enumerated_shapes')}, contract {want.enumerated_shapes}")
    elif got["shape"] and not (is_output and any(isinstance(d, str) for d in want.shape)) and got["shape"] != want.shape:
        problems.append(f"{where}: shape {got['shape']}, contract {want.shape}")
    return problems


def package_problems(info: dict[str, Any], functions: list[FunctionP], default: str) -> list[str]:
    problems: list[str] = []
    names = sorted(f.name for f in functions)
    if sorted(info["functions"]) != names:
        problems.append(f"package functions {sorted(info['functions'])}, contract {names}")
    if info["default_function"] != default:
        problems.append(f"default function {info['default_function']!r}, contract {default!r}")
    for fn in functions:
        got = info["functions"].get(fn.name)
        if got is None:
            continue
        for kind, wanted in (("inputs", fn.inputs), ("outputs", fn.outputs), ("states", fn.states)):
            have = {t["name"]: t for t in got[kind]}
            if sorted(have) != sorted(t.name for t in wanted):
                problems.append(f"function {fn.name!r} {kind}: {sorted(have)}, contract {sorted(t.name for t in wanted)}")
            for t in wanted:
                problems += _tensor_problems(f"function {fn.name!r} {kind[:-1]} {t.name!r}", t, have.get(t.name),
                                             kind == "outputs")
    return problems

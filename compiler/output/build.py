"""Validate, compile and render specs in memory; the CLI writes only when all succeeded."""

from __future__ import annotations

from compiler.planning.compile import Compiled, compile_spec, contract_files
from compiler.core.errors import Problem, SpecError
from compiler.output.launch import launch_files
from compiler.output.render import render_files
from compiler.output.training_report import fit_warnings
from compiler.reading.validate import validate_file


def compile_one(path: str, overrides: list[str], out_root: str = "generated") -> Compiled:
    return compile_spec(validate_file(path, overrides), out_root)


def build_outputs(paths: list[str], overrides: list[str], out_root: str,
                  warnings: list[str] | None = None) -> dict[str, dict[str, str]]:
    """name -> {relative path: text} for every spec, or SpecError with every problem of every spec.

    `warnings`, when given, receives what compiles but deserves a look (`training_report.fit_warnings`)."""
    problems: list[Problem] = []
    outputs: dict[str, dict[str, str]] = {}
    owners: dict[str, str] = {}
    for path in paths:
        try:
            compiled = compile_one(path, overrides, out_root)
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        name = compiled.spec.name
        if name in owners:
            problems.append(compiled.validated.doc.problem(("name",), f"name '{name}' is also used by {owners[name]}",
                                                           "every spec needs its own name: it is its output folder"))
            continue
        owners[name] = path
        try:
            outputs[name] = contract_files(compiled) | render_files(compiled) | launch_files(compiled)
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        if warnings is not None:
            warnings.extend(f"{name}: {w}" for w in fit_warnings(compiled))
    if problems:
        raise SpecError(problems)
    return outputs

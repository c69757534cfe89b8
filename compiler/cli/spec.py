"""`validate`, `compile`, `graph`, `schema` and `explain`: the commands that read and compile specs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from compiler.cli.app import JsonOpt, OutOpt, SetOpt, _arg_problem, _emit_json, app
from compiler.core.errors import SpecError


def _validate_all(specs: list[str], overrides: list[str]) -> tuple[list, list]:
    from compiler.reading.validate import validate_file

    ok, problems = [], []
    for path in specs:
        try:
            ok.append(validate_file(path, overrides))
        except SpecError as exc:
            problems.extend(exc.problems)
    return ok, problems


@app.command()
def validate(specs: Annotated[list[str], typer.Argument(help="Spec files.")], set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Validate specs: every problem at once, with file:line:col, key path and a hint."""
    ok, problems = _validate_all(specs, set_ or [])
    if json_:
        _emit_json({"ok": not problems, "valid": [v.path for v in ok], "problems": [p.as_json() for p in problems]})
        if problems:
            raise typer.Exit(2)
        return
    if problems:
        raise SpecError(problems)
    for v in ok:
        typer.echo(f"ok: {v.path} ({v.spec.name} {v.spec.version})")


@app.command("compile")
def compile_(
    specs: Annotated[list[str], typer.Argument(help="Spec files.")],
    out: OutOpt = "generated",
    check: Annotated[bool, typer.Option("--check", help="Exit 1 and name stale files instead of writing.")] = False,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Compile specs into OUT/<name>/: plan.json, contracts/, README.md, graph.mmd, launch/ (Slurm and Kubernetes)."""
    from compiler.output.build import build_outputs
    from compiler.output.emit import SCHEMA_FILE, schema_text, stale_files, stale_schema, write_file, write_folder

    warnings: list[str] = []
    outputs = build_outputs(specs, set_ or [], out, warnings)
    if check:
        stale = stale_schema(out)
        for name, files in outputs.items():
            stale += stale_files(out, name, files)
        if json_:
            _emit_json({"ok": not stale, "stale": stale})
        if stale:
            if not json_:
                typer.echo("stale generated files (run: modelspec compile " + " ".join(specs) + "):", err=True)
                for path in stale:
                    typer.echo(f"  {path}", err=True)
            raise typer.Exit(1)
        if not json_:
            typer.echo(f"up to date: {', '.join(sorted(outputs))}")
        return
    write_file(out, SCHEMA_FILE, schema_text())
    for name, files in sorted(outputs.items()):
        write_folder(out, name, files)
    if json_:
        _emit_json({"ok": True, "written": sorted(f"{out}/{n}" for n in outputs), "warnings": warnings})
    else:
        for name in sorted(outputs):
            typer.echo(f"compiled: {out}/{name}/ ({len(outputs[name])} files)")
        for w in warnings:
            typer.echo(f"warning: {w}", err=True)


@app.command()
def graph(
    spec: Annotated[str, typer.Argument(help="Spec file.")],
    format_: Annotated[str, typer.Option("--format", help="mermaid | dot | text")] = "text",
    set_: SetOpt = None,
) -> None:
    """Print the job graph."""
    from compiler.output.build import compile_one
    from compiler.output.graphviz import render_graph

    if format_ not in ("mermaid", "dot", "text"):
        raise SpecError([_arg_problem("--format", f"unknown format '{format_}'", "use mermaid, dot or text")])
    typer.echo(render_graph(compile_one(spec, set_ or []), format_), nl=False)


@app.command()
def schema(format_: Annotated[str, typer.Option("--format", help="json | markdown (the field reference of docs/spec.md)")] = "json") -> None:
    """Print the JSON Schema of the spec format, or its Markdown field reference."""
    if format_ == "markdown":
        from compiler.output.docgen import reference_markdown

        typer.echo(reference_markdown(), nl=False)
        return
    if format_ != "json":
        raise SpecError([_arg_problem("--format", f"unknown format '{format_}'", "use json or markdown")])
    from compiler.output.emit import schema_text

    typer.echo(schema_text(), nl=False)


@app.command()
def explain(
    spec: Annotated[str, typer.Argument(help="Spec file.")],
    job: Annotated[Optional[str], typer.Argument(help="Job id; all jobs when omitted.")] = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """What a job reads, why it exists and what invalidates it."""
    from compiler.output.build import compile_one
    from compiler.output.explain import explain_job, explain_plan

    compiled = compile_one(spec, set_ or [])
    if job is not None and job not in {j.id for j in compiled.jobs}:
        from compiler.core.errors import did_you_mean

        raise SpecError([_arg_problem("JOB", f"no job '{job}' in {spec}", did_you_mean(job, [j.id for j in compiled.jobs])
                                      or "list the jobs with: modelspec explain " + spec)])
    result = explain_job(compiled, job) if job else explain_plan(compiled)
    if json_:
        _emit_json(result)
    else:
        typer.echo(result["text"], nl=False)

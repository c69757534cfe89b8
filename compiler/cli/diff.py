"""`modelspec diff`: the semantic spec diff command (registered on the shared typer app).

Heavy work is imported inside the command, so registering it costs `modelspec --help` nothing.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from compiler.cli.app import _arg_problem, app
from compiler.core.errors import SpecError

FORMATS = ("text", "markdown", "json")


@app.command()
def diff(
    specs: Annotated[Optional[list[str]], typer.Argument(
        help="OLD NEW (each a spec file or REF:path); with --base, the specs to compare (default specs/*.yaml).")] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="Compare every given (or specs/*.yaml) spec against this git ref.")] = None,
    format_: Annotated[str, typer.Option("--format", help="text | markdown | json")] = "text",
    fail_on: Annotated[Optional[str], typer.Option("--fail-on", help="Exit 1 at or above: breaking | retrain | reexport | reverify.")] = None,
    allow_unversioned: Annotated[bool, typer.Option("--allow-unversioned",
                                                    help="Do not fail a BREAKING_CONTRACT change without a major version bump.")] = False,
) -> None:
    """Semantic diff of two specs: each change's class, invalidated jobs, contract and derived deltas."""
    from compiler.review import diff as d
    from compiler.review import sides

    specs = list(specs or [])
    problems = []
    if format_ not in FORMATS:
        problems.append(_arg_problem("--format", f"unknown format '{format_}'", "use text, markdown or json"))
    if fail_on is not None and fail_on not in d.FAIL_ON:
        problems.append(_arg_problem("--fail-on", f"unknown class '{fail_on}'", "use breaking, retrain, reexport or reverify"))
    if base is None and len(specs) != 2:
        problems.append(_arg_problem("SPECS", f"expected OLD and NEW, got {len(specs)} argument(s)",
                                     "modelspec diff origin/main:specs/toy.yaml specs/toy.yaml, or modelspec diff --base origin/main"))
    if problems:
        raise SpecError(problems)

    if base is None:
        reports = [d.diff_sides(sides.parse_side(specs[0]), sides.parse_side(specs[1]))]
        new_specs: list[str] = []
        removed_specs: list[str] = []
    else:
        if not specs:
            import glob

            specs = sorted(glob.glob("specs/*.yaml"))
        pairs, new_specs, removed_specs = sides.base_sides(base, specs)
        loaded, errs = [], []
        for old, new in pairs:  # every problem of every spec at once, then nothing printed
            try:
                loaded.append((sides.load_pair(old, new), old, new))
            except SpecError as exc:
                errs.extend(exc.problems)
        if errs:
            raise SpecError(errs)
        reports = [d.diff_compiled(a, b, old.source, new.source) for (a, b), old, new in loaded]

    if allow_unversioned:
        for r in reports:
            r["errors"] = []
    top = d.worst(r["class"] for r in reports)
    from compiler.review.render import render

    typer.echo(render(reports, format_, multi=base is not None, new_specs=new_specs, removed_specs=removed_specs, top=top), nl=False)
    if any(r["errors"] for r in reports):
        if format_ != "text":  # text already printed them
            for r in reports:
                for e in r["errors"]:
                    typer.echo(f"error: {r['new']['source']}: {e}", err=True)
        raise typer.Exit(1)
    if d.exceeds(top, fail_on):
        typer.echo(f"modelspec diff: class {top} is at or above --fail-on {fail_on}", err=True)
        raise typer.Exit(1)

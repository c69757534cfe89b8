"""Authoring commands on the shared CLI: `fmt`, `new` and `ci` (docs/authoring.md)."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from compiler.cli.app import JsonOpt, _arg_problem, _emit_json, app
from compiler.core.errors import SpecError


@app.command("fmt")
def fmt_(
    specs: Annotated[list[str], typer.Argument(help="Spec files.")],
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 and name the files that would change.")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="Write nothing; print what would change as a unified diff.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Rewrite specs in the canonical layout (comments kept; the spec's meaning is checked unchanged)."""
    import difflib

    from compiler.authoring.fmt import FmtRefused, format_file, write_atomic

    results, problems, refused = [], [], []
    for path in specs:
        try:
            results.append(format_file(path))
        except SpecError as exc:
            problems.extend(exc.problems)
        except FmtRefused as exc:
            refused.append(str(exc))
    if problems:
        raise SpecError(problems)
    if refused:
        for message in refused:
            typer.echo(f"modelspec fmt: {message} (a formatter bug; please report it)", err=True)
        raise typer.Exit(3)
    changed = [r for r in results if r.changed]
    if check or diff:
        if diff:
            for r in changed:
                sys.stdout.write("".join(difflib.unified_diff(r.old.splitlines(True), r.new.splitlines(True),
                                                              f"{r.path} (now)", f"{r.path} (formatted)")))
        if json_:
            _emit_json({"ok": not changed, "would_change": [r.path for r in changed]})
        elif check:
            for r in changed:
                typer.echo(f"would reformat: {r.path}", err=True)
            if not changed:
                typer.echo(f"fmt: {len(results)} file{'s' if len(results) != 1 else ''} already canonical")
        raise typer.Exit(1 if check and changed else 0)
    for r in changed:
        write_atomic(r.path, r.new)
    if json_:
        _emit_json({"ok": True, "formatted": [r.path for r in changed], "unchanged": [r.path for r in results if not r.changed]})
        return
    for r in changed:
        typer.echo(f"formatted: {r.path}")
    typer.echo(f"fmt: {len(changed)} reformatted, {len(results) - len(changed)} unchanged")


@app.command("new")
def new(
    role: Annotated[str, typer.Option("--role", help="worker | judge | drafter")],
    size: Annotated[str, typer.Option("--size", help="Parameters: 0.5b, 4b, 9b, 125m or a count.")],
    name: Annotated[Optional[str], typer.Option("--name", help="Spec name (default ROLE-SIZE).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Write the spec to this file instead of stdout.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:
    """Scaffold a valid spec for a role, its architecture sized to --size, derived values as comments."""
    from compiler.authoring.fmt import write_atomic
    from compiler.authoring.scaffold import scaffold

    if out is not None:
        if os.path.lexists(out) and not force:
            raise SpecError([_arg_problem("--out", f"{out} exists", "pass --force to overwrite it, or choose another file")])
        if os.path.isdir(out):
            raise SpecError([_arg_problem("--out", f"{out} is a folder", "name a file, e.g. specs/worker-4b.yaml")])
        folder = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(folder):
            raise SpecError([_arg_problem("--out", f"folder {folder} does not exist", "create it first")])
    text = scaffold(role, size, name, out)
    if out is None:
        sys.stdout.write(text)
        return
    write_atomic(out, text)
    typer.echo(f"wrote {out}", err=True)


@app.command("ci")
def ci(
    specs: Annotated[list[str], typer.Argument(help="Spec files (paths relative to the repository root).")],
    out: Annotated[str, typer.Option("--out", help="Output root; the files go to OUT/_ci/.")] = "generated",
    check: Annotated[bool, typer.Option("--check", help="Exit 1 and name stale files instead of writing.")] = False,
    install: Annotated[Optional[str], typer.Option("--install", help="Shell command that installs modelspec in CI.")] = None,
    python: Annotated[Optional[str], typer.Option("--python", help="Python version for actions/setup-python: one that pyproject.toml's requires-python allows (3.11).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Render a GitHub Actions workflow and a pre-commit config that check these specs (OUT/_ci/)."""
    from compiler.authoring.ci_templates import DEFAULT_INSTALL, DEFAULT_PYTHON, FOLDER, ci_files
    from compiler.output.emit import stale_files, write_folder

    files = ci_files(specs, install or DEFAULT_INSTALL, python or DEFAULT_PYTHON)
    if check:
        stale = stale_files(out, FOLDER, files)
        if json_:
            _emit_json({"ok": not stale, "stale": stale})
        elif stale:
            typer.echo("stale CI files (run: modelspec ci " + " ".join(specs) + "):", err=True)
            for path in stale:
                typer.echo(f"  {path}", err=True)
        else:
            typer.echo(f"up to date: {out}/{FOLDER}/")
        if stale:
            raise typer.Exit(1)
        return
    write_folder(out, FOLDER, files)
    if json_:
        _emit_json({"ok": True, "written": sorted(f"{out}/{FOLDER}/{n}" for n in files)})
    else:
        for n in sorted(files):
            typer.echo(f"wrote {out}/{FOLDER}/{n}")

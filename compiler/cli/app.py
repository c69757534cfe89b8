"""The typer app every `modelspec` command registers on, its shared options and helpers.

The bottom of the CLI layer: command modules (`spec.py`, `diff.py`, `author.py`, and the
runtime's) import from here, never from each other; `main.py` imports them all and owns the
single exit path. Heavy libraries are never imported here.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Declarative spec compiler for on-device language models.")

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a spec value: path=value (recorded in the plan).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
OutOpt = Annotated[str, typer.Option("--out", help="Output root; each spec goes to OUT/<name>/.")]
_debug = False


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Re-raise internal errors.")] = False) -> None:
    global _debug
    _debug = debug


def _emit_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _arg_problem(where: str, message: str, hint: str | None):
    from compiler.core.errors import Problem

    return Problem("<command line>", 1, 1, where, message, hint)

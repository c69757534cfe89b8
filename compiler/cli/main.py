"""The `modelspec` command line (typer): every compiler command, one exit path.

Spec problems print `file:line:col: path: message` plus a hint and exit 2; a check that says no
exits 1; anything else is a bug: traceback, exit 3 (`--debug` re-raises). Heavy libraries are
never imported here, so `--help` and `validate` start fast.
"""

from __future__ import annotations

import sys

import typer

from compiler.cli import app as cli_app
from compiler.cli import spec  # noqa: F401  (importing registers validate, compile, graph, schema, explain)
from compiler.cli import diff  # noqa: F401  (registers diff)
from compiler.cli import author  # noqa: F401,I001  (registers fmt, new, ci)
from compiler.cli.app import app
from compiler.core.errors import CheckFailed, SpecError

# Packages of the optional extras (pyproject.toml): the base install is the compiler alone.
EXTRAS = {"torch": "runtime", "transformers": "runtime", "tokenizers": "runtime", "safetensors": "runtime",
          "coremltools": "runtime", "numpy": "runtime", "tensorboard": "runtime", "accelerate": "runtime",
          "openai": "runtime", "aiolimiter": "runtime", "jsonschema": "runtime", "fsspec": "runtime", "s3fs": "runtime",
          "ray": "ray"}


def missing_extra(exc: BaseException) -> str | None:
    """The one-line error for an import of an extra that is not installed, else None."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if not isinstance(exc, ModuleNotFoundError) or name not in EXTRAS:
        return None
    return f"modelspec: this command needs {name}, which is not installed: pip install 'modelspec[{EXTRAS[name]}]'"


def main() -> None:
    try:
        app(standalone_mode=True)
    except SpecError as exc:
        for p in exc.problems:
            typer.echo(p.format(), err=True)
        n = len(exc.problems)
        typer.echo(f"{n} problem{'s' if n != 1 else ''}; nothing written.", err=True)
        sys.exit(2)
    except CheckFailed as exc:
        typer.echo(str(exc), err=True)
        sys.exit(1)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as exc:
        if missing_extra(exc) and not cli_app._debug:
            typer.echo(missing_extra(exc), err=True)
            sys.exit(2)
        if cli_app._debug:
            raise
        import traceback

        traceback.print_exc()
        typer.echo("modelspec: internal error (this is a bug; please report it with the traceback above)", err=True)
        sys.exit(3)

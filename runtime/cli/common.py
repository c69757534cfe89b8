"""What the runtime's commands share: the store option, loading the plan (refusing a stale
`generated/`), and checking job names given on the command line."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from compiler.cli.app import _arg_problem
from compiler.core.errors import CheckFailed, SpecError

# What `pip install 'modelspec[runtime]'` brings (pyproject.toml); the base install is the compiler.
RUNTIME_MODULES = ("torch", "transformers", "tokenizers", "safetensors", "coremltools", "numpy", "tensorboard")

WorkdirOpt = Annotated[str, typer.Option("--workdir", help="Store folder (content-addressed outputs).")]
JobList = Optional[list[str]]


def require_runtime(command: str) -> None:
    """Exit 2 with one line when the runtime extra is not installed (found without importing it)."""
    import importlib.util

    missing = [m for m in RUNTIME_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        typer.echo(f"modelspec {command} needs the runtime extra ({', '.join(missing)} not installed): "
                   "pip install 'modelspec[runtime]'", err=True)
        raise typer.Exit(2)


def _plan(spec: str, overrides: list[str], allow_stale: bool, workdir: str | None):
    """The plan (from the store's plan cache when the spec and the compiler did not change)."""
    from pathlib import Path

    from compiler.output.emit import stale_files

    from runtime.plan import load

    plan, contracts = load(spec, overrides, Path(workdir) if workdir else None)
    if not allow_stale and not overrides:
        # plan.json and the contracts are what runs and what artifacts are checked against; the
        # human README.md and graph.mmd are views of the same data (`compile --check` covers them)
        stale = stale_files("generated", plan.name, contracts, extra=False)
        if stale:
            raise CheckFailed("generated/ is stale for this spec (run: modelspec compile " + spec + ", or pass --allow-stale):\n  "
                              + "\n  ".join(stale))
    return plan


def _check_jobs(plan, names: list[str], option: str) -> None:
    from compiler.core.errors import did_you_mean

    ids = [j.id for j in plan.jobs]
    bad = [n for n in names if n not in ids]
    if bad:
        raise SpecError([_arg_problem(option, f"no job '{b}'", did_you_mean(b, ids) or f"jobs: {', '.join(ids)}") for b in bad])


def fail_input(message: str) -> None:
    """Invalid input on the command line: one line, exit 2, nothing written."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def package_arg(package: str):
    """The .mlpackage a command was given, or exit 2 when the path is not one."""
    from pathlib import Path

    pkg = Path(package)
    if not (pkg / "Manifest.json").is_file():
        fail_input(f"{package} is not an .mlpackage (no Manifest.json)")
    return pkg

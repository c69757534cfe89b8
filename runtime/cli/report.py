"""`modelspec report SPEC`: the spec's run as one self-contained HTML page (runtime/report/).

Reads the store without taking its lock (completion records are written atomically), so a
report can be written while a run goes on. Exit 0 written, 2 bad input (an invalid spec, no
store at --workdir).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compiler.cli.app import JsonOpt, SetOpt, _arg_problem, _emit_json, app
from compiler.core.errors import SpecError

from runtime.cli.common import WorkdirOpt


@app.command()
def report(
    spec: Annotated[str, typer.Argument(help="Spec file.")],
    out: Annotated[Optional[str], typer.Option("--out", help="The HTML file to write (default: <workdir>/reports/<name>.html).")] = None,
    workdir: WorkdirOpt = ".modelspec",
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Write the run report: gates, training curves, eval per sample kind, parity, package size by module."""
    from runtime.plan import load

    root = Path(workdir)
    if not (root / "jobs").is_dir():
        raise SpecError([_arg_problem("--workdir", f"no store at {workdir}",
                                      f"run `modelspec run {spec}` first, or pass the store with --workdir")])
    plan, contracts = load(spec, set_ or [], root)  # an invalid spec: exit 2 with file:line:col

    from runtime.report.collect import load as collect
    from runtime.report.page import write
    from runtime.store import Store

    data = collect(plan, contracts, Store(root), spec)
    target = Path(out) if out else root / "reports" / f"{plan.name}.html"
    write(data, target)
    ran = sum(j.ran for j in data.jobs.values())
    if json_:
        _emit_json({"ok": True, "report": str(target.absolute()), "jobs": len(data.jobs), "jobs_with_results": ran})
    else:
        typer.echo(f"wrote {target} ({ran} of {len(data.jobs)} jobs have results; open {target.absolute().as_uri()})", err=True)

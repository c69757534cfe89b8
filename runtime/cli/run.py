"""`modelspec run` and `modelspec status`, added to the compiler's typer app (layers run one way)."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from compiler.cli.app import JsonOpt, SetOpt, _arg_problem, _emit_json, app
from compiler.core.errors import SpecError

from runtime.cli.common import JobList, WorkdirOpt, _check_jobs, _plan, require_runtime

def _backend(executor: str, address: str | None):
    """None for local workers; a Ray backend, connected now when --address names a cluster."""
    if executor not in ("local", "ray"):
        raise SpecError([_arg_problem("--executor", f"unknown executor '{executor}'", "local or ray")])
    if executor == "local":
        if address:
            raise SpecError([_arg_problem("--address", "--address needs --executor ray", None)])
        return None
    from runtime.ray_backend import ClusterUnreachable, RayBackend

    backend = RayBackend(address)
    if address:
        try:
            backend.connect()
        except ClusterUnreachable as exc:
            raise SpecError([_arg_problem("--address", f"cannot reach a Ray cluster: {exc}",
                                          "start one with `ray start --head`, or leave --address out for a local cluster")])
    return backend


def _keys(plan, job_keys):
    """The plan's job keys; a remote input that cannot be read (missing, no credentials, unreachable) exits 2."""
    from runtime.remote import RemoteInputError

    try:
        return job_keys(plan)
    except RemoteInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)


@app.command()
def run(
    spec: Annotated[str, typer.Argument(help="Spec file.")],
    until: Annotated[JobList, typer.Option("--until", help="Run this job and everything it needs.")] = None,
    only: Annotated[JobList, typer.Option("--only", help="Run only this job (its inputs must be built).")] = None,
    force: Annotated[JobList, typer.Option("--force", help="Rerun this job even if cached.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would run; run nothing.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Print why each job is stale before running.")] = False,
    jobs: Annotated[Optional[int], typer.Option("--jobs", help="Independent jobs run in parallel (local: each in a long-lived "
                                                   "worker, default 1; ray: default no limit, the cluster places them).")] = None,
    executor: Annotated[str, typer.Option("--executor", help="Where jobs run: local worker processes, or ray (one Ray task "
                                          "per job with its CPUs and GPUs; docs/executors.md).")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="With --executor ray: the cluster's HOST:PORT or auto; "
                                                   "without it a local Ray cluster starts.")] = None,
    workdir: WorkdirOpt = ".modelspec",
    allow_stale: Annotated[bool, typer.Option("--allow-stale", help="Run even if generated/ is out of date.")] = False,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Run the compiled plan: cached jobs are skipped, the rest run; a killed run resumes."""
    require_runtime("run")
    from runtime.executor import Executor, Interrupted, select
    from runtime.keys import job_keys, job_states
    from runtime.progress import Reporter
    from runtime.store import Store

    backend = _backend(executor, address)  # a bad executor or an unreachable cluster writes nothing
    plan = _plan(spec, set_ or [], allow_stale, workdir)  # an invalid spec writes nothing, not even the store
    keys = _keys(plan, job_keys)  # a remote input that cannot be read writes nothing either
    store = Store(workdir)
    for option, names in (("--until", until or []), ("--only", only or []), ("--force", force or [])):
        _check_jobs(plan, names, option)
    selected = select(plan, until or [], only or [])
    with store.lock():
        if explain:
            for state in job_states(plan, store, keys):
                if state.id in selected and state.state != "up_to_date":
                    typer.echo(f"{state.id}: {state.state}: " + "; ".join(state.reasons), err=True)
        if jobs is None:
            jobs = len(selected) if backend is not None else 1
        runner = Executor(plan, store, jobs=jobs, force=tuple(force or ()), backend=backend, keys=keys)
        try:
            with Reporter(quiet=json_) as reporter:
                runner.reporter = reporter
                results = runner.run(selected, dry_run=dry_run)
        except Interrupted as exc:
            typer.echo(f"interrupted ({exc}); staging removed, the next run resumes", err=True)
            raise typer.Exit(130 if exc.signum == 2 else 143)
    ok = all(r.action in ("ran", "cached") or (dry_run and r.action == "skipped") for r in results)
    if json_:
        _emit_json({"ok": ok, "jobs": [r.as_json() for r in results]})
    else:
        from runtime.summary import lines as summary_lines

        options = (["--workdir", workdir] if workdir != ".modelspec" else []) + [w for o in (set_ or []) for w in ("--set", o)]
        for line in summary_lines(spec, results, spec_name=plan.name, options=options, dry_run=dry_run):
            typer.echo(line, err=True)
        ran = sum(r.action == "ran" for r in results)
        cached = sum(r.action == "cached" for r in results)
        typer.echo(f"{'ok' if ok else 'FAILED'}: {ran} ran, {cached} cached, {len(results) - ran - cached} other", err=True)
    if not ok:
        raise typer.Exit(1)


@app.command()
def status(
    spec: Annotated[str, typer.Argument(help="Spec file.")],
    workdir: WorkdirOpt = ".modelspec",
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Every job's state (up_to_date, stale, missing) and the reasons."""
    from runtime.keys import job_keys, job_states
    from runtime.plan import load
    from runtime.store import Store

    has_store = os.path.isdir(workdir)
    plan, _ = load(spec, set_ or [], Store(workdir).root if has_store else None)
    states = job_states(plan, Store(workdir), _keys(plan, job_keys)) if has_store else []
    if not states:
        from runtime.keys import JobState

        states = [JobState(j.id, j.kind, "", "missing", ["no store yet"]) for j in plan.jobs]
    store = Store(workdir) if has_store else None
    for s in states:
        if s.kind == "generate" and store is not None:
            s.reasons.append(_prompts_done(store, plan.name, s))
    if json_:
        _emit_json({"spec": plan.name, "jobs": [s.as_json() for s in states]})
        return
    width = max(len(s.id) for s in states)
    for s in states:
        typer.echo(f"{s.id:<{width}}  {s.state:<10}  {'; '.join(r for r in s.reasons if r)}")


def _prompts_done(store, spec_name: str, state) -> str:
    """The generate job's prompts finished so far (its progress file survives a kill), or the finished report's count."""
    import time

    from runtime.generation.progress import read_progress

    if state.state == "up_to_date":
        record = store.record(state.kind, state.key) or {}
        report = (record.get("metrics") or {})
        if "transcripts" in report:
            return f"{report['transcripts']} transcripts"
        return ""
    progress = read_progress(store.work_dir(spec_name, state.id))
    if progress is None:
        return "no prompt answered yet"
    age = time.time() - float(progress.get("updated", 0))
    return f"{progress['finished']} of {progress['prompts']} prompts finished ({age:.0f} s ago; answered requests are cached)"

"""`modelspec launch`: one rank of a training job that spans nodes, started by torchrun on each.

    torchrun --nnodes N --nproc-per-node P --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        --rdzv-id ID -m runtime.cli launch SPEC --job train --workdir /shared/store [--set ...]

Every rank loads the plan and the job keys; the jobs this one needs must already be in the
store. Rank 0 runs the job through the normal executor (staging, commit and completion record
as in `modelspec run`): its worker inherits the torchrun environment and joins the group as
rank 0. The other ranks run the job's body directly and write only their checkpoint shards.
When the job is already in the store, every rank exits 0.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from compiler.cli.app import JsonOpt, SetOpt, _arg_problem, _emit_json, app
from compiler.core.errors import SpecError

from runtime.cli.common import WorkdirOpt, _check_jobs, _plan, require_runtime

COMMAND = ("torchrun --nnodes N --nproc-per-node P --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id ID "
           "-m runtime.cli launch SPEC --job JOB --workdir /shared/store")


def rank_job(plan, store, keys, job_id: str) -> dict:
    """The job file of runtime.distributed.rank for this job, built as the executor builds a job's call."""
    k, pj = keys[job_id], plan.job(job_id)
    inputs = {}
    for need in pj.needs:
        nk = keys[need]
        record = store.record(nk.kind, nk.key) or {"outputs": {}}
        base = store.job_dir(nk.kind, nk.key)
        inputs[need] = {name: str(base / meta["path"]) for name, meta in record["outputs"].items()}
    provenance = {
        "spec": {"name": plan.name, "version": plan.version, "hash": plan.spec_hash},
        "job": {"id": job_id, "kind": k.kind, "fingerprint": k.fingerprint, "key": k.key},
        "upstream": {n: {"fingerprint": keys[n].fingerprint, "key": keys[n].key} for n in pj.needs},
    }
    ctx = {"job_id": job_id, "spec_dir": str(plan.spec_dir), "work_dir": str(store.work_dir(plan.name, job_id)),
           "cache_dir": str(store.cache_dir(k.kind)), "remote_dir": str(store.remote_dir()), "external": k.external,
           "provenance": provenance, "force": False,
           "spec_file": plan.spec_file or None, "resources": dict(pj.resources)}
    return {"kind": k.kind, "params": k.params, "inputs": inputs, "out": "", "result": "", "ctx": ctx}


def _fail(message: str) -> None:
    raise SpecError([_arg_problem("launch", message, f"run it on every node as: {COMMAND}")])


@app.command()
def launch(
    spec: Annotated[str, typer.Argument(help="Spec file.")],
    job: Annotated[str, typer.Option("--job", help="The training job to run (train, qat, or a trained teacher).")],
    workdir: WorkdirOpt = ".modelspec",
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """One rank of a multi-node training job; torchrun runs this on every node."""
    require_runtime("launch")
    from runtime.distributed.world import under_torchrun

    from runtime.executor import Executor
    from runtime.keys import job_keys
    from runtime.store import Store

    if not under_torchrun():
        _fail("not started by torchrun (RANK, WORLD_SIZE, MASTER_ADDR ... are not set)")
    plan = _plan(spec, set_ or [], True, workdir)
    _check_jobs(plan, [job], "--job")
    if plan.job(job).kind not in ("train", "qat", "teacher"):
        _fail(f"'{job}' is a {plan.job(job).kind} job; launch runs training jobs (train, qat, teacher)")
    store, keys, rank = Store(workdir), job_keys(plan), int(os.environ["RANK"])
    if store.record(keys[job].kind, keys[job].key) is not None and rank != 0:
        return  # rank 0 reports it as cached
    missing = [n for n in plan.job(job).needs if store.record(keys[n].kind, keys[n].key) is None]
    if missing:
        _fail(f"'{job}' needs {', '.join(missing)}, not in {workdir}: build them first with "
              f"`modelspec run {spec} --until {' --until '.join(missing)} --workdir {workdir}`")
    if rank != 0:
        from runtime.distributed.rank import run_rank

        run_rank(rank_job(plan, store, keys, job), rank)
        return
    with store.lock():
        results = Executor(plan, store, jobs=1).run([job])
    ok = all(r.action in ("ran", "cached") for r in results)
    if json_:
        _emit_json({"ok": ok, "jobs": [r.as_json() for r in results]})
    else:
        for r in results:
            typer.echo(f"{r.id}: {r.action}" + (f": {r.error}" if r.error else ""), err=True)
    if not ok:
        raise typer.Exit(1)

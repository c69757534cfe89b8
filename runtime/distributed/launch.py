"""Who runs a training job's ranks: this process, or torchrun started from here.

`run_or_launch` is called by a training job inside its worker:
  - one process in all (nproc x nodes == 1), or a rank that torchrun started (the rank entry
    below, or `modelspec launch` on a cluster): run the body here;
  - nproc > 1 on one node: start `python -m torch.distributed.run --standalone
    --nproc-per-node N -m runtime.distributed.rank <job file>` (an argument list, no shell),
    forward rank 0's progress events to the executor, and return the metrics rank 0 wrote.
    Rank 0 writes the job's outputs into the staging folder; the executor commits them as for
    any job;
  - nodes > 1: the local executor cannot start processes on other machines: an error that
    names the torchrun command to run on every node instead.
The job file and the result file live in the job's work folder (next to its checkpoints).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .world import DistributedError, under_torchrun

EVENT = "\x1emodelspec-event "  # prefix of a line a rank writes for the launcher to forward
JOB_FILE = "launch-job.json"
RESULT_FILE = "launch-result.json"
STOP_GRACE_S = 30


def run_or_launch(kind: str, params: Any, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any,
                  check: Callable[[int], Any], body: Callable[[], dict]) -> dict:
    """`check(world_size)` raises when the job cannot split its batch over that many processes."""
    nodes, nproc = ctx.resources["nodes"], ctx.resources["nproc"]
    if under_torchrun():
        check(int(os.environ["WORLD_SIZE"]))
        return body()
    if nodes * nproc == 1:
        check(1)
        return body()
    if nodes > 1:
        raise DistributedError(multi_node_message(ctx, nodes, nproc))
    check(nproc)
    return launch(kind, params, inputs, out, ctx, nproc)


def multi_node_message(ctx: Any, nodes: int, nproc: int) -> str:
    work = Path(ctx.work_dir)
    store = work.parents[2] if len(work.parents) > 2 else work
    spec = ctx.spec_file or "SPEC"
    key = str((ctx.provenance.get("job") or {}).get("key", ctx.job_id))[:12]
    return (f"training.resources.nodes is {nodes}: `modelspec run` starts processes on this machine only. Build the "
            f"jobs '{ctx.job_id}' needs with `modelspec run {spec} --until <them>`, then on each of the {nodes} nodes "
            f"(with the store on shared storage) run:\n  torchrun --nnodes {nodes} --nproc-per-node {nproc} "
            f"--rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id {key} -m runtime.cli launch {spec} "
            f"--job {ctx.job_id} --workdir {store}\n(HOST: the first node; add the --set options of this run)")


def job_file(kind: str, params: Any, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any, result: Path) -> dict:
    """Everything a rank needs to run the job again in its own process (JSON)."""
    return {"kind": kind, "params": params.model_dump(mode="json"), "out": str(out), "result": str(result),
            "inputs": {u: {n: str(p) for n, p in outs.items()} for u, outs in inputs.items()},
            "ctx": {"job_id": ctx.job_id, "spec_dir": str(ctx.spec_dir), "work_dir": str(ctx.work_dir),
                    "cache_dir": str(ctx.cache_dir) if ctx.cache_dir else None, "provenance": ctx.provenance,
                    "remote_dir": str(ctx.remote_dir) if getattr(ctx, "remote_dir", None) else None,
                    "external": getattr(ctx, "external", None) or {},
                    "force": ctx.force, "spec_file": str(ctx.spec_file) if ctx.spec_file else None,
                    "resources": ctx.resources}}


def _rank_env(device: str, nproc: int) -> dict[str, str]:
    """CPU ranks share this worker's cores (torchrun's own default is 1 thread per rank)."""
    env = dict(os.environ)
    if device == "cpu":
        cores = int(env.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
        env["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    return env


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that only calls an already resolved C function: the child of a threaded parent
    must not import or take locks between fork and exec (an import there can deadlock)."""
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6").prctl
    except OSError:
        return None
    deathsig = int(signal.SIGTERM)  # PR_SET_PDEATHSIG (1): torchrun stops its ranks on SIGTERM
    return lambda: prctl(1, deathsig)


def launch(kind: str, params: Any, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any, nproc: int) -> dict:
    work = Path(ctx.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    result = work / RESULT_FILE
    result.unlink(missing_ok=True)
    spec = work / JOB_FILE
    spec.write_text(json.dumps(job_file(kind, params, inputs, out, ctx, result)), encoding="utf-8")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "runtime.distributed.rank", str(spec)]
    ctx.log(f"{kind}: {nproc} processes ({ctx.resources['strategy']}, {ctx.resources['device']}) under torchrun")
    tail: collections.deque[str] = collections.deque(maxlen=60)
    failures: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            preexec_fn=_die_with_parent(), env=_rank_env(ctx.resources["device"], nproc))
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(EVENT):
                event = json.loads(line[len(EVENT):])
                if event[0] == "failed":
                    failures.append(f"rank {event[1]}: {event[2]}")
                else:
                    ctx.emit(tuple(event))
            else:
                tail.append(line.rstrip("\n"))
                sys.stdout.write(line)  # the ranks' own output: into the job's log (runtime.joblog)
        code = proc.wait()
    finally:
        _stop(proc)
    if code != 0 or not result.is_file():
        detail = "\n".join(failures) if failures else "\n".join(tail)
        raise DistributedError(f"{kind}: {nproc} torchrun processes failed (exit {code}):\n{detail}")
    metrics = json.loads(result.read_text(encoding="utf-8"))
    result.unlink()
    spec.unlink()
    return metrics


def _stop(proc: subprocess.Popen) -> None:
    """The launch must not outlive the job (an exception, or the executor cancelling it)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()  # its ranks die with it (PR_SET_PDEATHSIG in runtime.distributed.rank)
        proc.wait()

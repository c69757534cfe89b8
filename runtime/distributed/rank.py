"""One rank of a training job started by torchrun: `python -m runtime.distributed.rank JOB_FILE`.

The job file (runtime.distributed.launch.job_file) holds the kind, params, inputs, staging
folder and context of the job. Every rank runs the job's own `run` (which, under torchrun,
joins the process group instead of launching again); rank 0 prints progress events for the
launcher and writes the metrics to the result file. A rank that fails prints its error as an
event and exits 1, and torchrun stops the others.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from .launch import EVENT

PARAMS = {"train": "TrainParams", "qat": "QatParams", "teacher": "TeacherParams"}


def _print_event(event: tuple) -> None:
    sys.stdout.write(EVENT + json.dumps(list(event)) + "\n")
    sys.stdout.flush()


def run_rank(job: dict[str, Any], rank: int, emit=None) -> dict:
    """Run the job file's job as this rank; rank 0 writes into the job's staging folder."""
    from compiler.planning import params as params_mod
    from runtime.context import JobContext
    from runtime.jobs import runner

    params = getattr(params_mod, PARAMS[job["kind"]]).model_validate(job["params"], strict=False)
    c = job["ctx"]
    ctx = JobContext(job_id=c["job_id"], spec_dir=Path(c["spec_dir"]), work_dir=Path(c["work_dir"]),
                     cache_dir=Path(c["cache_dir"]) if c.get("cache_dir") else None, provenance=c["provenance"],
                     force=c["force"], spec_file=Path(c["spec_file"]) if c.get("spec_file") else None,
                     resources=c["resources"], emit=emit or (lambda event: None),
                     remote_dir=Path(c["remote_dir"]) if c.get("remote_dir") else None, external=c.get("external") or {})
    inputs = {u: {n: Path(p) for n, p in outs.items()} for u, outs in job["inputs"].items()}
    if rank == 0:
        return runner(job["kind"])(params, inputs, Path(job["out"]), ctx)
    with tempfile.TemporaryDirectory(prefix="modelspec-rank-") as scratch:  # other ranks write no outputs
        return runner(job["kind"])(params, inputs, Path(scratch), ctx)


def main(argv: list[str]) -> int:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive torchrun
    except OSError:
        pass
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: a hung rank's stacks on stderr
    rank = int(os.environ["RANK"])
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        metrics = run_rank(job, rank, emit=_print_event if rank == 0 else None)
    except Exception as exc:  # noqa: BLE001 - reported to the launcher, then torchrun stops the others
        traceback.print_exc()
        _print_event(("failed", rank, f"{type(exc).__name__}: {exc}"))
        return 1
    if rank == 0:
        result = Path(job["result"])
        tmp = result.with_name(result.name + ".tmp")
        tmp.write_text(json.dumps(metrics, sort_keys=True), encoding="utf-8")
        os.replace(tmp, result)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # no interpreter teardown: freeing a DDP model after its gloo group can deadlock (World.close)
    os._exit(code)

"""Worker-process side: run one job with typed params into a staging folder.

Workers are long-lived (a process pool), so torch and coremltools are imported once per
worker, not once per job. A worker dies with its parent (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

_events = None


def init_worker(queue, threads: int | None = None, parent: int | None = None) -> None:
    """`threads`: intra-op threads per worker when several jobs share the cores (set before torch loads).
    `parent`: the pid that started the pool; a worker whose parent died before it armed PR_SET_PDEATHSIG
    exits at once, rather than take a queued job and write into a staging folder nobody will commit."""
    global _events
    _events = queue
    os.environ["TQDM_DISABLE"] = "1"  # coremltools' per-pass tqdm bars would break the run's own progress display
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt means
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if parent is not None and os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(0)


def report_to(events) -> None:
    """Send progress events to `events` (anything with `put`): a Ray task's queue instead of the pool's."""
    global _events
    _events = events


def _emit(event: tuple) -> None:
    if _events is not None:
        _events.put(event)


def run_job(kind: str, job_id: str, params_json: dict, inputs: dict[str, dict[str, str]], staging: str,
            ctx_data: dict[str, Any]) -> dict:
    from compiler.planning import params as params_mod

    from .context import JobContext
    from .joblog import JobLog
    from .jobs import runner

    cls = params_mod.BY_KIND[kind]
    params = cls.model_validate(params_json, strict=False)
    with JobLog(ctx_data.get("log"), job_id) as log:  # library warnings and chatter go to the job's log, not the console

        def emit(event: tuple) -> None:
            if event[0] in ("log", "detail"):
                log.note(str(event[2]))
            if event[0] != "detail":
                _emit(event)

        ctx = JobContext(job_id=job_id, spec_dir=Path(ctx_data["spec_dir"]), work_dir=Path(ctx_data["work_dir"]),
                         cache_dir=Path(ctx_data["cache_dir"]),
                         provenance=ctx_data["provenance"], force=ctx_data["force"], emit=emit,
                         spec_file=Path(ctx_data["spec_file"]) if ctx_data.get("spec_file") else None,
                         resources=ctx_data["resources"],
                         remote_dir=Path(ctx_data["remote_dir"]) if ctx_data.get("remote_dir") else None,
                         external=ctx_data.get("external") or {})
        start = time.perf_counter()
        metrics = runner(kind)(params, {u: {n: Path(p) for n, p in outs.items()} for u, outs in inputs.items()}, Path(staging), ctx)
    return {"metrics": metrics or {}, "seconds": time.perf_counter() - start,
            "worker": {"host": socket.gethostname(), "pid": os.getpid()}, "warnings": log.warnings}

"""Where a job's worker function runs: the executor schedules, a backend only places and runs.

`LocalBackend` is a pool of long-lived worker processes on this machine (the default);
`runtime.ray_backend.RayBackend` hands each job to a Ray cluster as one task. Both return
`concurrent.futures.Future`s, so the executor's loop (order, caching, failures, gates,
interrupts) is the same for every backend.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import queue as queue_mod
from typing import Any, Protocol


class Backend(Protocol):
    def refuse(self, resources: dict[str, Any]) -> str | None:
        """Why a job asking for `resources` (a plan job's placement) can never run here, else None."""

    def submit(self, job_id: str, resources: dict[str, Any], args: tuple) -> cf.Future:
        """Run `runtime.worker.run_job(*args)`; the future holds its result dict."""

    def events(self) -> list[tuple]:
        """Progress events the running jobs emitted since the last call."""

    def abort(self) -> None:
        """Stop every running job; returns once none of them can write anymore."""

    def close(self) -> None:
        """Release workers after a run (running jobs are waited for, queued ones cancelled)."""


class LocalBackend:
    """A spawn (or fork) pool of `jobs` worker processes, each importing torch once."""

    def __init__(self, jobs: int = 1, start_method: str = "spawn"):
        self.jobs = max(1, jobs)
        self.start_method = start_method
        self._pool: cf.ProcessPoolExecutor | None = None
        self._queue = None

    def _pool_get(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            ctx = mp.get_context(self.start_method)
            self._queue = ctx.Queue()
            from .worker import init_worker

            self._pool = cf.ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx, initializer=init_worker,
                                                 initargs=(self._queue, self._threads_per_worker(), os.getpid()))
        return self._pool

    def _threads_per_worker(self) -> int | None:
        """With several workers, split the cores between them: oversubscribed torch threads thrash."""
        if self.jobs == 1:
            return None
        return max(1, (os.cpu_count() or 1) // self.jobs)

    def refuse(self, resources: dict[str, Any]) -> str | None:
        return None  # the job itself says when its device is missing (runtime.distributed.world.pick_device)

    def submit(self, job_id: str, resources: dict[str, Any], args: tuple) -> cf.Future:
        from .worker import run_job

        return self._pool_get().submit(run_job, *args)

    def events(self) -> list[tuple]:
        out = []
        while self._queue is not None:
            try:
                out.append(self._queue.get_nowait())
            except queue_mod.Empty:
                break
        return out

    def abort(self) -> None:
        if self._pool is not None:
            procs = list(getattr(self._pool, "_processes", {}).values())
            for proc in procs:
                proc.kill()
            for proc in procs:  # dead before their staging folders go, so nothing is written after
                proc.join(timeout=10)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

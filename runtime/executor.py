"""Run a compiled plan: cached jobs are verified and skipped, the rest run through a backend.

Jobs run in topological order, independent ones in parallel up to `jobs`, in local worker
processes or as tasks on a Ray cluster (runtime.backends, runtime.ray_backend). A job's outputs are
staged and committed by the store only when the job succeeded; Ctrl-C / SIGTERM remove the
staging folders, release the lock and exit 130 / 143; the next run resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from .backends import Backend, LocalBackend
from .joblog import log_path
from .keys import JobKey, job_keys
from .plan import Plan
from . import faults
from .store import Store


class Interrupted(Exception):
    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@dataclass
class JobResult:
    id: str
    kind: str
    action: str  # ran | cached | failed | skipped
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    worker: dict | None = None  # where a job that ran ran: host, pid (and Ray node and worker ids)
    log: str | None = None  # the log file of a job that ran or failed running (runtime.joblog)
    warnings: int | None = None  # library warnings written to that log (None: unknown, the job failed)

    def as_json(self) -> dict:
        out = {"id": self.id, "kind": self.kind, "action": self.action, "seconds": round(self.seconds, 3), "outputs": self.outputs}
        if self.error:
            out["error"] = self.error
        if self.worker:
            out["worker"] = self.worker
        if self.log:
            out["log"] = self.log
        if self.warnings is not None:
            out["warnings"] = self.warnings
        return out


def select(plan: Plan, until: list[str], only: list[str]) -> list[str]:
    order = [j.id for j in plan.jobs]
    if only:
        return [j for j in order if j in set(only)]
    if until:
        wanted = set(until)
        for u in until:
            wanted |= plan.ancestors(u)
        return [j for j in order if j in wanted]
    return order


class Executor:
    def __init__(self, plan: Plan, store: Store, jobs: int = 1, force: tuple[str, ...] = (), reporter=None,
                 start_method: str = "spawn", backend: Backend | None = None, keys: dict[str, JobKey] | None = None):
        """`start_method`: how local worker processes start. spawn (the CLI) imports torch afresh in each
        worker; fork reuses a parent that already imported it (the kill soak in tests/runtime/kill_soak.py
        forks hundreds of runs from one warm process). `backend`: where jobs run (default: local workers)."""
        self.plan = plan
        self.store = store
        self.max_jobs = max(1, jobs)
        self.force = set(force)
        self.reporter = reporter
        self.keys: dict[str, JobKey] = keys if keys is not None else job_keys(plan)
        self.results: dict[str, JobResult] = {}
        self.backend: Backend = backend or LocalBackend(self.max_jobs, start_method)
        self._staging: dict[str, Path] = {}

    # -- helpers ----------------------------------------------------------------------------
    def _say(self, *event) -> None:
        if self.reporter:
            self.reporter(event)

    def _outputs(self, job_id: str) -> dict[str, str]:
        k = self.keys[job_id]
        record = self.store.record(k.kind, k.key)
        base = self.store.job_dir(k.kind, k.key)
        return {name: str(base / meta["path"]) for name, meta in (record or {"outputs": {}})["outputs"].items()}

    def _verdict(self, job_id: str) -> str | None:
        """The failure message of a completed job whose verdict was negative (gates), else None."""
        k = self.keys[job_id]
        verdict = ((self.store.record(k.kind, k.key) or {}).get("metrics") or {}).get("_verdict")
        if isinstance(verdict, dict) and not verdict.get("ok", True):
            return str(verdict.get("message") or "the job's verdict was negative")
        return None

    def _cached(self, job_id: str) -> bool:
        k = self.keys[job_id]
        if job_id in self.force:
            return False
        record = self.store.record(k.kind, k.key)
        if record is None:
            return False
        bad = self.store.verify(k.kind, k.key, record)
        if bad:
            where = self.store.quarantine(k.kind, k.key)
            self._say("log", job_id, f"cached outputs {', '.join(bad)} failed their hash check: quarantined to {where}; rerunning")
            return False
        return True

    def _drain(self) -> None:
        for event in self.backend.events():
            self._say(*event)

    def _refused(self, selected: list[str]) -> dict[str, str]:
        """Jobs that will run but whose resources the backend can never provide (checked before anything runs)."""
        out = {}
        for job_id in selected:
            k = self.keys[job_id]
            if job_id in self.force or self.store.record(k.kind, k.key) is None:
                why = self.backend.refuse(dict(self.plan.job(job_id).resources))
                if why:
                    out[job_id] = why
        return out

    def log_file(self, job_id: str) -> Path:
        return log_path(self.store.root, self.plan.name, job_id)

    def _submit(self, job_id: str) -> cf.Future:
        k = self.keys[job_id]
        pj = self.plan.job(job_id)
        staging = self.store.new_staging(k.key)
        self._staging[job_id] = staging
        inputs = {need: self._outputs(need) for need in pj.needs}
        provenance = {
            "spec": {"name": self.plan.name, "version": self.plan.version, "hash": self.plan.spec_hash},
            "job": {"id": job_id, "kind": k.kind, "fingerprint": k.fingerprint, "key": k.key},
            "upstream": {n: {"fingerprint": self.keys[n].fingerprint, "key": self.keys[n].key} for n in pj.needs},
        }
        ctx = {"spec_dir": str(self.plan.spec_dir), "spec_file": self.plan.spec_file, "work_dir": str(self.store.work_dir(self.plan.name, job_id)),
               "cache_dir": str(self.store.cache_dir(k.kind)), "remote_dir": str(self.store.remote_dir()),
               "external": k.external, "provenance": provenance, "force": job_id in self.force, "resources": dict(pj.resources),
               "log": str(self.log_file(job_id))}
        self._say("job_start", job_id, k.kind)
        return self.backend.submit(job_id, dict(pj.resources), (k.kind, job_id, k.params, inputs, str(staging), ctx))

    def _commit(self, job_id: str, result: dict) -> None:
        k = self.keys[job_id]
        pj = self.plan.job(job_id)
        record = {
            "job": job_id, "kind": k.kind, "fingerprint": k.fingerprint, "key": k.key, "params": k.params,
            "external": k.external, "upstream": k.upstream, "spec_hash": self.plan.spec_hash,
            "upstream_fingerprints": {n: self.keys[n].fingerprint for n in pj.needs},
            "metrics": result["metrics"], "seconds": round(result["seconds"], 3),
        }
        faults.point("before_record", job_id)
        self.store.commit(self._staging.pop(job_id), k.kind, k.key, pj.outputs, record)
        faults.point("before_index", job_id)
        self.store.drop_work(self.plan.name, job_id)
        self.store.update_index(self.plan.name, {job_id: {
            "key": k.key, "fingerprint": k.fingerprint, "params": k.params, "external": k.external, "upstream": k.upstream}})

    # -- main loop --------------------------------------------------------------------------
    def run(self, selected: list[str], dry_run: bool = False) -> list[JobResult]:
        pending = list(selected)
        done: set[str] = set()
        failed = False
        running: dict[cf.Future, tuple[str, float]] = {}
        sel = set(selected)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.store.clear_staging()
            for job_id, why in ({} if dry_run else self._refused(selected)).items():
                self.results[job_id] = JobResult(job_id, self.keys[job_id].kind, "failed", error=why)
                self._say("job_done", self.results[job_id])
                pending.remove(job_id)
                failed = True  # nothing starts: a job that cannot be placed would fail the run later anyway
            while pending or running:
                for job_id in list(pending):
                    needs = [n for n in self.plan.job(job_id).needs]
                    if failed:
                        break
                    missing = [n for n in needs if n not in sel and not self._cached(n)]
                    if missing:
                        self.results[job_id] = JobResult(job_id, self.keys[job_id].kind, "failed",
                                                         error=f"upstream not built: {', '.join(missing)} (run without --only)")
                        pending.remove(job_id)
                        failed = True
                        continue
                    if any(n in sel and n not in done for n in needs):
                        continue
                    pending.remove(job_id)
                    if self._cached(job_id):
                        verdict = self._verdict(job_id)
                        self.results[job_id] = JobResult(job_id, self.keys[job_id].kind, "failed" if verdict else "cached",
                                                         outputs=self._outputs(job_id), error=verdict)
                        self._say("job_done", self.results[job_id])
                        if verdict:
                            failed = True
                        else:
                            done.add(job_id)
                        continue
                    if dry_run:
                        self.results[job_id] = JobResult(job_id, self.keys[job_id].kind, "skipped", error="dry run: would run")
                        done.add(job_id)
                        continue
                    if len(running) >= self.max_jobs:
                        pending.insert(0, job_id)
                        break
                    running[self._submit(job_id)] = (job_id, time.perf_counter())
                if not running:
                    if failed or not pending:
                        break
                    continue
                finished, _ = cf.wait(list(running), timeout=0.1, return_when=cf.FIRST_COMPLETED)
                self._drain()
                for fut in finished:
                    job_id, start = running.pop(fut)
                    kind = self.keys[job_id].kind
                    try:
                        result = fut.result()
                        self._commit(job_id, result)
                        verdict = self._verdict(job_id)
                        self.results[job_id] = JobResult(job_id, kind, "failed" if verdict else "ran", time.perf_counter() - start,
                                                         self._outputs(job_id), error=verdict, worker=result.get("worker"),
                                                         log=str(self.log_file(job_id)), warnings=result.get("warnings"))
                        if verdict:
                            failed = True
                        else:
                            done.add(job_id)
                    except Exception as exc:  # a job failed: report it, run nothing that depends on it
                        shutil.rmtree(self._staging.pop(job_id, Path("/nonexistent")), ignore_errors=True)
                        self.results[job_id] = JobResult(job_id, kind, "failed", time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}",
                                                         log=str(self.log_file(job_id)))
                        failed = True
                    self._say("job_done", self.results[job_id])
            for job_id in pending:
                self.results.setdefault(job_id, JobResult(job_id, self.keys[job_id].kind, "skipped"))
        except Interrupted:
            self._abort()
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._drain()
            self.backend.close()
        return [self.results[j] for j in selected if j in self.results]

    def _on_signal(self, signum, frame) -> None:
        raise Interrupted(signum)

    def _abort(self) -> None:
        self.backend.abort()  # every job stopped before its staging folder goes, so nothing is written after
        for staging in self._staging.values():
            shutil.rmtree(staging, ignore_errors=True)
        self._staging.clear()
        # we hold the store's lock: any staging folder left (one created as the signal landed,
        # before it was recorded) is this run's and incomplete
        self.store.clear_staging()

"""Kill soak: SIGKILL every job kind at seeded random moments, then resume; nothing partial is done.

    python -m tests.runtime.kill_soak OUT [--kills 20] [--seed 20261121]

One warm driver process imports torch, coremltools and the job modules once and never runs a
tensor op itself; every run is a forked child in its own process group, with the executor's
worker forked from it (`Executor(start_method="fork")`), so a run reaches its job in
milliseconds rather than the seconds a fresh `modelspec run` spends importing. A kill is
`killpg(SIGKILL)` of the child's whole group (executor and worker die together, as in an OOM
kill or a lost machine) at a moment drawn uniformly from [0, 1.2 x the job's window], the
window running from the executor's submit to its commit as the reference run measured it; a
draw past the run's end lands on a finished run and does not count (attempts >= kills), and the
window becomes that run's duration (the machine's pace changed, or the job resumed from a
checkpoint).

Outputs that record wall-clock timings (reports, per-step metrics, tensorboard files, and the
release manifest's hashes of the shipped reports) are checked for integrity, not equality.

For each job of a small copy of the toy spec (every kind but generate, whose kills are tested in
tests/generation/test_generate_job.py; in plan order), at least `--kills`
kills land per kind while the job is working; after every kill:
  - every completion record in the store verifies (no job is done with partial outputs);
  - every recorded job's outputs equal the uninterrupted reference run's;
  - every other job's completion record is untouched (finished work is not redone);
then the job is run to completion unforced. Once a job has completed, later kills land in a
forced rerun, which must leave the completed outputs intact. Finally a run of the whole plan
is a no-op (every job cached) and the store equals the reference. Exit 0 and a JSON report at
OUT/report.json; any broken promise raises.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# outputs that record wall-clock timings (reports, per-step metrics, tensorboard event files)
# differ between any two runs; every other output must be byte-identical to the reference's
TIMED = {"report", "metrics", "tensorboard"}


class SoakFailure(AssertionError):
    pass


def soak_spec(folder: Path) -> Path:
    """The tiny spec of test_pipeline_resume with its eval gates as warnings (the tiny student
    does not reach the toy's quality bar, and publish must run for its kills to be measured) and
    one prefill shape, 64."""
    from tests.runtime.test_pipeline_resume import tiny_spec

    path = tiny_spec(folder)
    lines = []
    for line in path.read_text().splitlines():
        if "metric: eval." in line and "policy:" not in line:
            line = line.rstrip()[:-1] + ", policy: warn}"
        # one prefill function (as the Ray test's spec): a conversion of two functions to kill and redo, not four
        lines.append(line.replace("prefill: [64, 128, 256]", "prefill: [64]"))
    path.write_text("\n".join(lines) + "\n")
    return path


def warm_imports() -> None:
    import torch  # noqa: F401

    import runtime.coreml  # noqa: F401  (imports coremltools, quietly: seconds, once, here)

    from runtime.jobs import IMPLEMENTED
    import importlib

    for module in IMPLEMENTED.values():
        importlib.import_module(module)


# -- one run in a forked child ------------------------------------------------------------------

def _child(spec: Path, store_root: Path, selected: list[str], force: list[str], wfd: int, result_file: Path) -> None:
    os.setpgid(0, 0)
    from runtime.executor import Executor
    from runtime.plan import load
    from runtime.store import Store

    def reporter(event: tuple) -> None:
        if event[0] == "job_start":
            os.write(wfd, b"S")

    plan, _ = load(str(spec), [], store_root)
    store = Store(str(store_root))
    with store.lock():
        results = Executor(plan, store, force=tuple(force), reporter=reporter, start_method="fork").run(selected)
    result_file.write_text(json.dumps([r.as_json() for r in results]))


def run_child(spec: Path, store: Path, selected: list[str], force: list[str], kill_after: float | None,
              scratch: Path) -> tuple[bool, list[dict] | None, float | None]:
    """(killed while working, the run's job results when it finished, seconds from its job's
    start to its end when it finished before the kill)."""
    rfd, wfd = os.pipe()
    result_file = scratch / "result.json"
    result_file.unlink(missing_ok=True)
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 1
        try:
            os.close(rfd)
            _child(spec, store, selected, force, wfd, result_file)
            code = 0
        except BaseException as exc:  # noqa: BLE001 (reported through the exit code and stderr)
            print(f"soak child: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            os._exit(code)
    os.close(wfd)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # the child set it first, or already exited
    killed = False
    if kill_after is not None:
        ready, _, _ = select.select([rfd], [], [], 600)
        if not ready or os.read(rfd, 1) != b"S":
            _reap(pid)
            raise SoakFailure(f"{selected}: the run ended before its job started")
        started = time.monotonic()
        deadline = started + kill_after
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                os.close(rfd)
                if os.waitstatus_to_exitcode(status) != 0:
                    raise SoakFailure(f"run of {selected} (force {force}) exited with status {os.waitstatus_to_exitcode(status)}")
                return False, _results(result_file), time.monotonic() - started
            time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))
        try:
            os.killpg(pid, signal.SIGKILL)
            killed = True
        except ProcessLookupError:
            pass
    status = _reap(pid)
    os.close(rfd)
    if killed:
        return True, None, None
    results = _results(result_file)
    failed = [r for r in results or [] if r["action"] not in ("ran", "cached")]
    if status != 0 or results is None or failed:
        raise SoakFailure(f"run of {selected} (force {force}) exited with status {status}: {failed}")
    return False, results, None


def _reap(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _results(path: Path) -> list[dict] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- what must hold after every kill ------------------------------------------------------------

def records(store: Path) -> dict[str, dict]:
    """job id -> its completion record (bytes, mtime_ns, parsed) and the hashes of its untimed outputs."""
    out = {}
    for path in store.glob("jobs/*/*/_complete.json"):
        data = path.read_bytes()
        rec = json.loads(data)
        hashes = {n: o["sha256"] for n, o in rec["outputs"].items() if n not in TIMED}
        if "manifest" in hashes:  # the release manifest hashes the (timed) reports it ships
            hashes["manifest"] = _untimed_manifest(path.parent / rec["outputs"]["manifest"]["path"])
        out[rec["job"]] = {"path": str(path), "bytes": data, "mtime_ns": path.stat().st_mtime_ns, "hashes": hashes, "record": rec}
    return out


def _untimed_manifest(path: Path) -> str:
    import hashlib

    manifest = json.loads(path.read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("reports/")}
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def check_store(store: Path, reference: dict[str, dict], before: dict[str, dict], job: str) -> dict[str, dict]:
    from runtime.store import Store

    s = Store(str(store))
    now = records(store)
    for job_id, r in now.items():
        bad = s.verify(r["record"]["kind"], r["record"]["key"], r["record"])
        if bad:
            raise SoakFailure(f"after a kill in {job}: {job_id} is recorded done but {bad} fail their hash check")
        if r["hashes"] != reference[job_id]["hashes"]:
            raise SoakFailure(f"after a kill in {job}: {job_id}'s outputs differ from the uninterrupted run's")
    for job_id, r in before.items():
        if job_id == job:
            continue
        if job_id not in now or (now[job_id]["bytes"], now[job_id]["mtime_ns"]) != (r["bytes"], r["mtime_ns"]):
            raise SoakFailure(f"a kill in {job} changed or removed {job_id}'s completion record: finished work redone or lost")
    if job in before and job not in now:
        raise SoakFailure(f"a killed forced rerun of {job} lost its completed outputs")
    return now


# -- the soak ------------------------------------------------------------------------------------

def soak(out: Path, kills: int, seed: int, kinds: set[str] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    spec = soak_spec(out / "spec")
    warm_imports()
    from runtime.plan import load

    plan, _ = load(str(spec), [], None)
    scratch = out / "scratch"
    scratch.mkdir(exist_ok=True)
    reference_store = out / "reference"
    start = time.perf_counter()
    _, ref_results, _ = run_child(spec, reference_store, [j.id for j in plan.jobs], [], None, scratch)
    reference = records(reference_store)
    # a job's window: from the executor's submit to its commit, as the reference run measured it
    window = {r["id"]: r["seconds"] for r in ref_results or []}
    report: dict = {"seed": seed, "kills_per_kind": kills, "reference_seconds": round(time.perf_counter() - start, 1),
                    "jobs": {}, "kinds": {}}
    missing = [j.id for j in plan.jobs if j.id not in reference]
    if missing:
        raise SoakFailure(f"the reference run did not complete {missing}")
    per_kind: dict[str, int] = {}
    for j in plan.jobs:
        per_kind[j.kind] = per_kind.get(j.kind, 0) + 1
    rng = random.Random(seed)
    store = out / "store"
    nth: dict[str, int] = {}
    for j in plan.jobs:
        ref_seconds = window[j.id]
        # a kind's kills spread over its jobs, the first ones taking the remainder: `kills` per kind in all
        i = nth[j.kind] = nth.get(j.kind, -1) + 1
        share = kills // per_kind[j.kind] + (1 if i < kills % per_kind[j.kind] else 0)
        wanted = share if kinds is None or j.kind in kinds else 0
        landed = attempts = 0
        t0 = time.perf_counter()
        while landed < wanted:
            attempts += 1
            if attempts > 4 * wanted + 10:
                raise SoakFailure(f"{j.id}: only {landed} of {attempts} kills landed while the job worked")
            before = records(store)
            force = [j.id] if j.id in before else []
            killed, _, took = run_child(spec, store, [j.id], force, rng.uniform(0.0, 1.2 * ref_seconds), scratch)
            landed += killed
            if took is not None:  # the run beat the draw: the machine's pace changed, or the job resumed
                ref_seconds = took
            check_store(store, reference, before, j.id)
        before = records(store)
        _, results, _ = run_child(spec, store, [j.id], [], None, scratch)
        after = check_store(store, reference, before, j.id)
        if j.id not in after or not results or results[-1]["action"] not in ("ran", "cached"):
            raise SoakFailure(f"{j.id} did not complete after its kills: {results}")
        report["jobs"][j.id] = {"kind": j.kind, "kills_landed": landed, "attempts": attempts,
                                "reference_seconds": ref_seconds, "soak_seconds": round(time.perf_counter() - t0, 1)}
        kind = report["kinds"].setdefault(j.kind, {"kills_landed": 0, "attempts": 0})
        kind["kills_landed"] += landed
        kind["attempts"] += attempts
    _, results, _ = run_child(spec, store, [j.id for j in plan.jobs], [], None, scratch)
    ran = [r["id"] for r in results or [] if r["action"] != "cached"]
    if ran:
        raise SoakFailure(f"the final run of the whole plan was not a no-op: {ran}")
    final = records(store)
    if {k: v["hashes"] for k, v in final.items()} != {k: v["hashes"] for k, v in reference.items()}:
        raise SoakFailure("the soaked store differs from the uninterrupted run's")
    leftovers = list((store / "staging").iterdir()) if (store / "staging").exists() else []
    if leftovers:
        raise SoakFailure(f"staging not cleared: {leftovers}")
    report["total_kills"] = sum(k["kills_landed"] for k in report["kinds"].values())
    report["seconds"] = round(time.perf_counter() - start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--kills", type=int, default=20, help="kills that must land per job kind")
    ap.add_argument("--seed", type=int, default=20261121)
    ap.add_argument("--kind", action="append", help="soak only these kinds (the others just run)")
    args = ap.parse_args(argv)
    os.environ["TQDM_DISABLE"] = "1"  # read when tqdm is first imported: coremltools' pass bars stay quiet
    report = soak(args.out, args.kills, args.seed, set(args.kind) if args.kind else None)
    print(json.dumps({k: v for k, v in report.items() if k != "jobs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A synthetic 1000-job plan, every job already complete in the store: how long is a no-op run?

    .venv/bin/python bench/bench_noop_1000.py

The plan is layered (each job needs up to two earlier ones), 1000 jobs of one kind with distinct
params; the store is filled through `Store.commit` with the records the executor writes, so the
run takes the real path: keys from params and upstream keys, the completion record read and its
outputs re-hashed per job, the index. Goal (issue 7): at most 2 s. Median of 5 runs, in-process
(the CLI's own start-up is `bench_noop.py`'s subject). Writes bench/results/noop_1000.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.executor import Executor, select  # noqa: E402
from runtime.keys import job_keys  # noqa: E402
from runtime.plan import Plan, PlanJob  # noqa: E402
from runtime.progress import Reporter  # noqa: E402
from runtime.store import Store  # noqa: E402

N = 1000


def synthetic_plan(spec_dir: Path) -> Plan:
    jobs = []
    for i in range(N):
        needs = tuple(f"job-{j:04d}" for j in sorted({i // 2 - 1, i - 1}) if j >= 0 and i > 0)
        jobs.append(PlanJob(f"job-{i:04d}", "gates", needs, {"gates": [], "index": i}, {"report": "report.json"}, f"fp-{i:04d}"))
    return Plan("synthetic-1000", "1.0.0", "spec-hash", spec_dir, tuple(jobs))


def fill(plan: Plan, store: Store) -> None:
    keys = job_keys(plan)
    for pj in plan.jobs:
        k = keys[pj.id]
        staging = store.new_staging(k.key)
        (staging / "report.json").write_text(json.dumps({"job": pj.id, "passed": True}))
        record = {"job": pj.id, "kind": k.kind, "fingerprint": k.fingerprint, "key": k.key, "params": k.params,
                  "external": k.external, "upstream": k.upstream, "spec_hash": plan.spec_hash,
                  "upstream_fingerprints": {n: keys[n].fingerprint for n in pj.needs}, "metrics": {}, "seconds": 0.0}
        store.commit(staging, k.kind, k.key, pj.outputs, record)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plan = synthetic_plan(Path(tmp))
        store = Store(str(Path(tmp) / "store"))
        fill(plan, store)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            with store.lock(), Reporter(quiet=True) as reporter:
                results = Executor(plan, store, reporter=reporter).run(select(plan, [], []))
            times.append(time.perf_counter() - start)
            assert len(results) == N and {r.action for r in results} == {"cached"}, {r.action for r in results}
    result = {"benchmark": "no-op run of a synthetic 1000-job plan (all cached), in-process", "jobs": N,
              "seconds": times, "median_s": statistics.median(times), "goal_s": 2.0}
    out = ROOT / "bench" / "results" / "noop_1000.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"1000-job no-op run: median {result['median_s']:.3f} s (goal <= 2 s) -> {out}")


if __name__ == "__main__":
    main()

"""The toy pipeline end to end at two commits, one after the other on this machine: wall time per job and
the hard gates' values, so a runtime change shows what it costs and that the toy's numbers hold.

    .venv/bin/python bench/bench_toy_before_after.py --before d0989f0 --label training-compute

The `before` commit is checked out into a temporary git worktree and run with this venv, its own
source first on PYTHONPATH (the venv's editable install points at this checkout); `after` is this
checkout as it is. Each side runs `modelspec run specs/toy.yaml --json` from an empty store.
Writes bench/results/toy_<label>.json. Run it on a quiet machine: the figures are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_toy(src: Path, store: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    start = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "modelspec"), "run", "specs/toy.yaml", "--json",
                           "--workdir", str(store)], cwd=src, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{src}: modelspec run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    jobs = json.loads(proc.stdout)["jobs"]
    gates = next(j for j in jobs if j["id"] == "gates")
    report = json.loads(Path(gates["outputs"]["report"]).read_text())
    return {"total_s": round(took, 1), "per_job_s": {j["id"]: round(j["seconds"], 2) for j in jobs},
            "hard_gates_passed": report["passed"],
            "gates": {g["metric"]: g["value"] for g in report["gates"] if g["policy"] == "hard"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="git ref of the baseline")
    parser.add_argument("--label", required=True)
    args = parser.parse_args()
    result: dict = {"benchmark": "toy pipeline end to end, before and after, one after the other",
                    "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "before": args.before}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            result["before_run"] = run_toy(base, Path(tmp) / "store-before")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
        result["after"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True).stdout.strip()
        result["after_run"] = run_toy(ROOT, Path(tmp) / "store-after")
    out = ROOT / "bench" / "results" / f"toy_{args.label}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""A no-op `modelspec run` against a no-op `dvc repro` of 20 trivial stages, side by side.

    .venv/bin/python bench/bench_noop.py [--dvc PATH] [--runs N] [--until JOB]

Both tools are started as fresh processes, alternately, in one run (this machine is noisy).
modelspec runs specs/toy.yaml against the repository's store (`.modelspec/`), which must
already hold every selected job (run `modelspec run specs/toy.yaml` first); a no-op run still
compiles the spec, checks generated/, re-hashes every cached output it uses and takes the lock.
DVC gets a git+dvc repository with a chain of 20 stages (`cp` of a small file), reproduced
once before timing. DVC is not a dependency of modelspec: install it anywhere
(`python3 -m venv /tmp/dvcenv && /tmp/dvcenv/bin/pip install dvc`) and pass `--dvc`.
Goal (issue 3): modelspec median <= 0.3 x DVC median. Writes bench/results/noop.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELSPEC = Path(sys.executable).parent / "modelspec"
STAGES = 20


def dvc_repo(dvc: str, folder: Path) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@example.com", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@example.com")
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True, env=env)
    subprocess.run([dvc, "init", "-q"], cwd=folder, check=True, env=env)
    subprocess.run([dvc, "config", "core.analytics", "false"], cwd=folder, check=True)
    (folder / "s0.txt").write_text("seed\n")
    stages = {f"s{i}": {"cmd": f"cp s{i - 1}.txt s{i}.txt", "deps": [f"s{i - 1}.txt"], "outs": [f"s{i}.txt"]}
              for i in range(1, STAGES + 1)}
    (folder / "dvc.yaml").write_text(json.dumps({"stages": stages}, indent=1))  # JSON is YAML
    subprocess.run([dvc, "repro", "-q"], cwd=folder, check=True, env=env, capture_output=True)


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dvc", default=shutil.which("dvc") or "/tmp/dvcenv/bin/dvc")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--until", default=None, help="limit the modelspec run (default: the whole pipeline)")
    args = ap.parse_args()
    ms_cmd = [str(MODELSPEC), "run", "specs/toy.yaml", "--json"] + (["--until", args.until] if args.until else [])
    check = subprocess.run(ms_cmd, cwd=ROOT, capture_output=True, text=True)
    summary = json.loads(check.stdout or "{}")
    not_cached = [j["id"] for j in summary.get("jobs", []) if j["action"] != "cached"]
    if check.returncode != 0 or not_cached:
        raise SystemExit(f"the store is not complete (not cached: {not_cached}); run `modelspec run specs/toy.yaml` first")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        dvc_repo(args.dvc, repo)
        dvc_cmd = [args.dvc, "repro", "-q"]
        timed(dvc_cmd, repo)
        timed(ms_cmd, ROOT)
        dvc_times, ms_times = [], []
        for _ in range(args.runs):
            dvc_times.append(timed(dvc_cmd, repo))
            ms_times.append(timed(ms_cmd, ROOT))
    dvc_med, ms_med = statistics.median(dvc_times), statistics.median(ms_times)
    result = {"benchmark": "no-op run: modelspec vs dvc repro (20 trivial stages)", "runs": args.runs,
              "modelspec_jobs": len(summary["jobs"]), "dvc_stages": STAGES,
              "dvc_version": subprocess.run([args.dvc, "--version"], capture_output=True, text=True).stdout.strip(),
              "modelspec_s": ms_times, "dvc_s": dvc_times, "modelspec_median_s": ms_med, "dvc_median_s": dvc_med,
              "ratio": ms_med / dvc_med, "goal": "<= 0.3"}
    out = ROOT / "bench" / "results" / "noop.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"modelspec no-op median {ms_med:.3f} s ({len(summary['jobs'])} jobs), dvc repro median {dvc_med:.3f} s "
          f"({STAGES} stages): ratio {ms_med / dvc_med:.2f} (goal <= 0.3) -> {out}")


if __name__ == "__main__":
    main()

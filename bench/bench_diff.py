"""`modelspec diff` of two worker-9b specs, cold (a fresh process each run, end to end).

    .venv/bin/python bench/bench_diff.py [--runs N]

Cases, each run N times alternately after one warm-up (the machine is noisy):
- files: `modelspec diff OLD.yaml NEW.yaml --format json` on specs/worker-9b.yaml and an edited
  copy (learning rate, a new prefill shape, a gate threshold, a profile's memory);
- ref: `modelspec diff HEAD:specs/worker-9b.yaml specs/worker-9b.yaml` in a temporary git
  repository (adds the `git rev-parse`/`git show` subprocesses);
- markdown: the files case rendered as markdown;
- help: `modelspec --help`, the floor every command pays (interpreter, typer, the CLI modules).

What dominates is measured twice: `python -X importtime` of the files case (the slowest
top-level imports, cumulative) and an in-process breakdown of one diff (import, load +
validate + compile per side, contract files, the diff itself, rendering).
Goal (issue 6): median <= 1 s. Writes bench/results/diff.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELSPEC = Path(sys.executable).parent / "modelspec"
SPEC = ROOT / "specs" / "worker-9b.yaml"
EDITS = (
    ("lr: 2.0e-4,", "lr: 1.5e-4,"),
    ("prefill: [4096, 8192, 16384]", "prefill: [2048, 4096, 8192, 16384]"),
    ("value: 0.98, min_n: 500}", "value: 0.97, min_n: 500}"),
    ("memory_gb: 24,", "memory_gb: 28,"),
)
GOAL_S = 1.0
WATCH = ("compiler.schema", "pydantic", "typer", "click", "ruamel.yaml", "compiler.reading.rules", "compiler.review.diff",
         "compiler.review.sides", "compiler.review.tree", "compiler.review.breaks", "compiler.review.render",
         "compiler.cli.diff", "jinja2", "networkx", "torch")


def edited() -> str:
    text = SPEC.read_text(encoding="utf-8")
    for old, new in EDITS:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def stats(times: list[float]) -> dict:
    return {"runs": len(times), "median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4)}


def importtime(cmd: list[str], cwd: Path, top: int = 12) -> dict:
    """The slowest imports (cumulative microseconds) of one fresh process, and their sum at top level."""
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|", 2)
        rows.append((int(cum_us), int(self_us), name[1:]))  # nested imports keep their indent
    top_level = [r for r in rows if not r[2].startswith(" ")]
    cumulative = {r[2].strip(): r[0] for r in rows}
    return {
        "watched_cumulative_ms": {n: round(cumulative[n] / 1000, 1) for n in WATCH if n in cumulative},
        "top_level_imports_total_ms": round(sum(r[0] for r in top_level) / 1000, 1),
        "slowest_top_level_ms": {r[2].strip(): round(r[0] / 1000, 1) for r in sorted(top_level, reverse=True)[:top] if r[0] >= 1000},
    }


BREAKDOWN = r"""
import json, sys, time
t0 = time.perf_counter()
from compiler.cli import main as cli  # noqa: F401  (registers every command)
from compiler.review import diff as d
from compiler.review.sides import parse_side
from compiler.review.render import render
t1 = time.perf_counter()
old_side, new_side = parse_side(sys.argv[1]), parse_side(sys.argv[2])
from compiler.reading.validate import validate_file
from compiler.planning.compile import compile_spec, contract_files
t2 = time.perf_counter()
va, vb = validate_file(old_side.path), validate_file(new_side.path)
t3 = time.perf_counter()
a, b = compile_spec(va), compile_spec(vb)
t4 = time.perf_counter()
contract_files(a), contract_files(b)
t5 = time.perf_counter()
report = d.diff_compiled(a, b, old_side.source, new_side.source)
t6 = time.perf_counter()
render([report], "json", multi=False)
t7 = time.perf_counter()
ms = lambda x: round(x * 1000, 1)
print(json.dumps({"import_cli_and_diff_ms": ms(t1 - t0), "import_validate_compile_ms": ms(t2 - t1),
                  "load_and_validate_both_ms": ms(t3 - t2), "plan_and_fingerprints_both_ms": ms(t4 - t3),
                  "contract_files_both_ms": ms(t5 - t4), "diff_compiled_ms": ms(t6 - t5),
                  "render_json_ms": ms(t7 - t6), "class": report["class"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "data").symlink_to(ROOT / "specs" / "data", target_is_directory=True)
        old, new = work / "old.yaml", work / "new.yaml"
        shutil.copy(SPEC, old)
        new.write_text(edited(), encoding="utf-8")
        repo = work / "repo"
        (repo / "specs").mkdir(parents=True)
        shutil.copy(SPEC, repo / "specs" / "worker-9b.yaml")
        git = ["git", "-c", "user.name=b", "-c", "user.email=b@example.com", "-c", "commit.gpgsign=false"]
        subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
        subprocess.run(git + ["add", "specs"], cwd=repo, check=True)
        subprocess.run(git + ["commit", "-qm", "base"], cwd=repo, check=True)
        (repo / "specs" / "worker-9b.yaml").write_text(edited(), encoding="utf-8")

        cases = {
            "files": ([str(MODELSPEC), "diff", str(old), str(new), "--format", "json"], work),
            "ref": ([str(MODELSPEC), "diff", "HEAD:specs/worker-9b.yaml", "specs/worker-9b.yaml", "--format", "json"], repo),
            "markdown": ([str(MODELSPEC), "diff", str(old), str(new), "--format", "markdown"], work),
            "help": ([str(MODELSPEC), "--help"], work),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        for cmd, cwd in cases.values():
            timed(cmd, cwd)  # warm the page cache
        for _ in range(args.runs):
            for name, (cmd, cwd) in cases.items():
                times[name].append(timed(cmd, cwd))
        report = json.loads(subprocess.run(cases["files"][0], cwd=work, capture_output=True, text=True).stdout)
        imports = importtime(cases["files"][0], work)
        breakdowns = [json.loads(subprocess.run([sys.executable, "-c", BREAKDOWN, str(old), str(new)], cwd=ROOT,
                                                capture_output=True, text=True, check=True).stdout) for _ in range(5)]
    breakdown = {k: (statistics.median(b[k] for b in breakdowns) if k != "class" else breakdowns[0][k]) for k in breakdowns[0]}
    result = {
        "benchmark": "modelspec diff of two worker-9b specs, cold (fresh process, end to end)",
        "_machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "goal_s": GOAL_S,
        "edits": [f"{a} -> {b}" for a, b in EDITS],
        "diff_class": report["class"],
        "diff_changes": len(report["changes"]),
        "jobs": {k: len(v) for k, v in report["jobs"].items() if isinstance(v, list)},
        "cold": {name: stats(t) for name, t in times.items()},
        "breakdown_in_process_median_ms": breakdown,
        "importtime_files_case": imports,
    }
    med = result["cold"]["files"]["median_s"]
    result["meets_goal"] = med <= GOAL_S and result["cold"]["ref"]["median_s"] <= GOAL_S
    result["above_help_floor_s"] = round(med - result["cold"]["help"]["median_s"], 4)
    out = ROOT / "bench" / "results" / "diff.json"
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()

"""Compiler benchmarks: cold `validate` of the toy spec, compile of worker-9b, and compile of
synthetic specs with many prefill shapes. Cold = a fresh `modelspec` process each run.

    .venv/bin/python bench/bench_compiler.py [--runs N]

Writes bench/results/compiler.json. Goals (issue 2): validate toy cold median <= 0.4 s;
compile worker-9b <= 1 s; a 100-shape spec (300+ jobs) <= 2 s.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELSPEC = os.path.join(os.path.dirname(sys.executable), "modelspec")


def synthetic_spec(shapes: int, folder: str) -> str:
    text = open(os.path.join(ROOT, "specs", "toy.yaml"), encoding="utf-8").read()
    lengths = [16 * (i + 1) for i in range(shapes)]
    top = lengths[-1]
    text = text.replace("name: toy-worker", f"name: synthetic-{shapes}")
    text = text.replace("prefill: [64, 128, 256]", f"prefill: [{', '.join(map(str, lengths))}]")
    text = text.replace("max_context: 256", f"max_context: {top}").replace("cache_len: 256", f"cache_len: {top}")
    text = text.replace("context: 256}", f"context: {top}}}")
    path = os.path.join(folder, f"synthetic-{shapes}.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    shutil.copytree(os.path.join(ROOT, "specs", "data"), os.path.join(folder, "data"), dirs_exist_ok=True)
    return path


def timed(cmd: list[str], runs: int) -> dict:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "max_s": round(max(times), 4), "runs": runs}


def job_count(spec: str) -> int:
    sys.path.insert(0, ROOT)
    from compiler.output.build import compile_one

    return len(compile_one(spec, []).jobs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        results["help_cold"] = timed([MODELSPEC, "--help"], args.runs)
        results["validate_toy_cold"] = timed([MODELSPEC, "validate", "specs/toy.yaml"], args.runs)
        results["compile_worker_9b_cold"] = timed([MODELSPEC, "compile", "specs/worker-9b.yaml", "--out", out], args.runs)
        for shapes in (100, 150):
            spec = synthetic_spec(shapes, tmp)
            entry = timed([MODELSPEC, "compile", spec, "--out", out], max(3, args.runs // 3))
            entry["jobs"] = job_count(spec)
            results[f"compile_synthetic_{shapes}_shapes_cold"] = entry
    results["_machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "compiler.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2, sort_keys=True)
        fh.write("\n")
    for name, r in results.items():
        if not name.startswith("_"):
            extra = f"  ({r['jobs']} jobs)" if "jobs" in r else ""
            print(f"{name:<42} median {r['median_s']:.3f} s  [min {r['min_s']:.3f}, max {r['max_s']:.3f}, n={r['runs']}]{extra}")


if __name__ == "__main__":
    main()

"""The toy pipeline end to end, and the contract gate on its package.

    .venv/bin/python bench/bench_toy.py [--workdir DIR]

1. `modelspec run specs/toy.yaml` from an empty store: wall time per job (as the executor
   measured it) and in total (the process, imports included). Goal (issue 4): at most 5 minutes
   on 2 cores.
2. A no-op rerun (everything cached).
3. `modelspec verify specs/toy.yaml PACKAGE` as a fresh process (contracts plus parity of every
   function with the reference interpreter), timed 3 times. Goal (issue 5): at most 30 s.
   Reports the interpreter's SNR against torch per function (the bar is 55 dB).
Writes bench/results/toy.json. Run it on a quiet machine: the figures are wall times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = "specs/toy.yaml"


def modelspec(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "modelspec"), *args], cwd=ROOT, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"modelspec {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return took, proc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", help="store to use (default: a fresh temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.workdir or str(Path(tmp) / "store")
        total, proc = modelspec("run", SPEC, "--workdir", store, "--json")
        jobs = json.loads(proc.stdout)["jobs"]
        noop, _ = modelspec("run", SPEC, "--workdir", store, "--json")
        package = next(j for j in jobs if j["id"] == "convert")["outputs"]["package"]
        report_path = Path(tmp) / "verify.json"
        verify_s = [modelspec("verify", SPEC, package, "--workdir", store, "--json", str(report_path))[0] for _ in range(3)]
        report = json.loads(report_path.read_text())
    snr = {fn: rep["metrics"]["snr_db"]["value"] for fn, rep in report["parity"].items()}
    result = {
        "benchmark": "toy pipeline end to end on this machine, then modelspec verify on its package",
        "pipeline_total_s": total, "pipeline_goal_s": 300,
        "per_job_s": {j["id"]: j["seconds"] for j in jobs}, "actions": sorted({j["action"] for j in jobs}),
        "noop_rerun_s": noop,
        "verify_s": verify_s, "verify_median_s": statistics.median(verify_s), "verify_goal_s": 30,
        "verify_contract_check_s": report["seconds"],
        "interpreter_snr_db": snr, "interpreter_snr_bar_db": 55,
        "fp16_snr_db": {fn: rep["metrics"]["fp16_snr_db"]["value"] for fn, rep in report["parity"].items()},
    }
    out = ROOT / "bench" / "results" / "toy.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    slowest = sorted(result["per_job_s"].items(), key=lambda kv: -kv[1])[:4]
    print(f"toy pipeline {total:.1f} s (goal <= 300 s; slowest {', '.join(f'{k} {v:.1f}s' for k, v in slowest)}); "
          f"no-op rerun {noop:.2f} s; verify median {result['verify_median_s']:.1f} s (goal <= 30 s); "
          f"interpreter SNR min {min(snr.values()):.1f} dB -> {out}")


if __name__ == "__main__":
    main()

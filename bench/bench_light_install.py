"""The light install the PR workflow runs: size and time of the compiler without the runtime.

    .venv/bin/python bench/bench_light_install.py [--runs N] [--ref HEAD]

Each run: a clean checkout of REF (`git archive`, no working-tree edits), a fresh venv, and the
workflow's install line (`python -m pip install -e .`, `compiler/authoring/ci_templates.py`
DEFAULT_INSTALL) timed with a cold pip cache (`--no-cache-dir`) and no local wheel folders
(PIP_CONFIG_FILE=/dev/null, no PIP_FIND_LINKS): every package comes from the package index, as on
a stock runner. Size: `du` of the venv minus an empty venv made the same way. Then the
workflow's commands run in that venv (validate, fmt --check, compile --check, diff) and must
exit 0, and no runtime package may be installed. For comparison the full install's size is
the repository's own `.venv` (the `test` extra, CPU torch). Goal (issue 18): under 100 MB and
under 60 s. Writes bench/results/light_install.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = {"torch", "transformers", "tokenizers", "safetensors", "coremltools", "numpy", "tensorboard", "ray"}


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def checkout(ref: str, folder: Path) -> None:
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)


def pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")}
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def one_run(ref: str, python: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="light-install-") as tmp:
        tmp_path = Path(tmp)
        repo, empty, venv = tmp_path / "repo", tmp_path / "empty", tmp_path / "venv"
        repo.mkdir()
        checkout(ref, repo)
        subprocess.run([python, "-m", "venv", str(empty)], check=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        start = time.perf_counter()
        proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir", "-q", "-e", "."],
                              cwd=repo, env=pip_env(), capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"light install failed ({proc.returncode}):\n{proc.stderr}")
        size = du(venv) - du(empty)
        listed = json.loads(subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                                           capture_output=True, text=True, check=True, env=pip_env()).stdout)
        packages = sorted(f"{p['name']}=={p['version']}" for p in listed)
        commands = {}
        modelspec = str(venv / "bin" / "modelspec")
        specs = sorted(str(p.relative_to(repo)) for p in (repo / "specs").glob("*.yaml"))
        for name, args in (("validate", ["validate", *specs]), ("fmt --check", ["fmt", "--check", *specs]),
                           ("compile --check", ["compile", "--check", *specs]),
                           ("diff", ["diff", "specs/toy.yaml", "specs/toy.yaml"]),
                           ("ci", ["ci", *specs, "--out", str(tmp_path / "ci")])):
            t0 = time.perf_counter()
            rc = subprocess.run([modelspec, *args], cwd=repo, capture_output=True, text=True).returncode
            commands[name] = {"exit": rc, "seconds": round(time.perf_counter() - t0, 2)}
        run = subprocess.run([modelspec, "run", "specs/toy.yaml"], cwd=repo, capture_output=True, text=True)
        return {"seconds": round(seconds, 2), "bytes": size, "packages": packages, "commands": commands,
                "run_without_runtime": {"exit": run.returncode, "stderr": run.stderr.strip()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ref", default="HEAD")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    ref = subprocess.run(["git", "rev-parse", args.ref], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    runs = [one_run(ref, args.python) for _ in range(args.runs)]
    for r in runs:
        print(f"light install: {r['seconds']:.1f} s, {r['bytes'] / 1e6:.1f} MB, {len(r['packages'])} packages", file=sys.stderr)
    last = runs[-1]
    installed = {p.split("==")[0].lower() for p in last["packages"]}
    full = ROOT / ".venv"
    result = {
        "benchmark": "light install (compiler + CLI, no runtime extra): the generated PR workflow's install line",
        "install": "python -m pip install --no-cache-dir -e .  (fresh venv, clean checkout, index only, cold cache)",
        "ref": ref,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "runs": len(runs),
        "seconds": [r["seconds"] for r in runs],
        "median_seconds": round(statistics.median(r["seconds"] for r in runs), 2),
        "bytes": [r["bytes"] for r in runs],
        "median_mb": round(statistics.median(r["bytes"] for r in runs) / 1e6, 1),
        "packages": last["packages"],
        "runtime_packages_installed": sorted(installed & RUNTIME),
        "commands": last["commands"],
        "run_without_runtime": last["run_without_runtime"],
        "full_install_mb": round(du(full) / 1e6, 1) if full.is_dir() else None,
        "full_install_note": "the repository's .venv: `pip install -e '.[test]'` with the local CPU torch wheel "
                             "(a stock runner resolving torch from the index gets the CUDA build, about 2.8 GB)",
        "goal": {"mb": 100, "seconds": 60},
    }
    result["goal_met"] = result["median_mb"] < 100 and result["median_seconds"] < 60 and all(
        c["exit"] == 0 for c in last["commands"].values()) and not result["runtime_packages_installed"]
    out = ROOT / "bench" / "results" / "light_install.json"
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("median_seconds", "median_mb", "commands", "goal_met")}, indent=1))


if __name__ == "__main__":
    main()

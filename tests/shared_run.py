"""One `modelspec run` shared by every xdist worker of a test session, under a file lock.

The end-to-end modules (tests/test_toy_end_to_end.py, tests/test_toy_judge_end_to_end.py) build their run once:
a module fixture was built twice in one CI run (540 s each) when a module's tests did not stay together on one
worker, although the module is one xdist group. The first worker to take the lock runs it; the others wait and
read what it printed.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest


def shared_run(tmp_path_factory: pytest.TempPathFactory, name: str,
               run: Callable[[Path], subprocess.CompletedProcess]) -> dict:
    """`run(store)` once per session under `<basetemp>/<name>`; returns {"root", "store", "jobs", "stderr"}."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done.json").exists():
            proc = run(root / "store")
            assert proc.returncode == 0, proc.stderr[-4000:]
            (root / "done.json").write_text(json.dumps({"stdout": proc.stdout, "stderr": proc.stderr}))
    done = json.loads((root / "done.json").read_text())
    jobs = {j["id"]: j for j in json.loads(done["stdout"])["jobs"]}
    return {"root": root, "store": root / "store", "jobs": jobs, "stderr": done["stderr"]}

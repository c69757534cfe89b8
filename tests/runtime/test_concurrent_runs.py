"""Four `modelspec run`s of the same spec on the same store at once: each job runs once, the
others wait for the store's lock and then find it cached; all exit cleanly, nothing is left in
staging and every completion record verifies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.store import Store

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_four_runs_on_one_store_run_each_job_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "runtime.cli", "run", "specs/toy.yaml", "--until", "dataset", "--workdir", str(store), "--json"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    assert [rc for rc, _, _ in results] == [0] * 4, [err[-2000:] for _, _, err in results]
    actions: dict[str, list[str]] = {}
    for _, out, _ in results:
        for job in json.loads(out)["jobs"]:
            actions.setdefault(job["id"], []).append(job["action"])
    assert set(actions) == {"tokenizer", "dataset"}
    for job, seen in actions.items():
        assert sorted(seen) == ["cached", "cached", "cached", "ran"], (job, seen)
    assert not any((store / "staging").iterdir())
    s = Store(str(store))
    for kind in ("tokenizer", "dataset"):
        (record,) = list((store / "jobs" / kind).glob("*/_complete.json"))
        key = record.parent.name
        assert s.verify(kind, key, json.loads(record.read_text())) == []

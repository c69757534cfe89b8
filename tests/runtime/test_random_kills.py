"""SIGKILL of the CLI at seeded random moments of a run, 8 times, then a rerun: no job is ever done with
partial outputs (every completion record verifies), finished jobs are not redone, and the final
artifacts equal an uninterrupted run's. Covers the tokenizer and dataset kinds (the cheap head
of the pipeline); the training kinds' resume is covered by test_pipeline_resume.py."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runtime.helpers import store_records as records

from runtime.store import Store

ROOT = Path(__file__).resolve().parents[2]
CMD = [sys.executable, "-m", "runtime.cli", "run", "specs/toy.yaml", "--until", "dataset", "--json", "--workdir"]
KILLS = 8  # every kind is also killed at random moments by tests/runtime/test_kill_soak.py
pytestmark = pytest.mark.slow


def every_record_verifies(store: Path) -> None:
    s = Store(str(store))
    for path in store.glob("jobs/*/*/_complete.json"):
        rec = json.loads(path.read_text())
        assert s.verify(rec["kind"], rec["key"], rec) == [], f"{rec['job']} is recorded done with bad outputs"


def test_seeded_kills_then_a_rerun(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    start = time.perf_counter()
    assert subprocess.run([*CMD, str(reference)], cwd=ROOT, capture_output=True, timeout=600).returncode == 0
    full = time.perf_counter() - start
    want = records(reference)
    rng = random.Random(20261121)
    store = tmp_path / "store"
    completed_before: dict[str, dict] = {}
    interrupted = 0
    for i in range(KILLS):
        # once both jobs are done, force them so every kill lands in real work; a killed forced
        # rerun must leave the earlier completed outputs intact
        force = ["--force", "tokenizer", "--force", "dataset"] if len(completed_before) == 2 else []
        proc = subprocess.Popen([*CMD, str(store), *force], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.3, full))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            interrupted += 1
        every_record_verifies(store)
        done = records(store)
        assert all(want[j] == h for j, h in done.items()), "a job is recorded done with other outputs than the reference"
        if not force:  # without --force a finished job stays finished
            assert set(completed_before) <= set(done), "a finished job was lost"
        completed_before = done
    assert interrupted >= KILLS // 2, f"only {interrupted} of {KILLS} kills landed while the run was working"
    final = subprocess.run([*CMD, str(store)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    every_record_verifies(store)
    assert records(store) == records(reference)
    assert not any((store / "staging").iterdir())

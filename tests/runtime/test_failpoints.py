"""SIGKILL at named points of a job's completion, then a rerun: no job is done with partial
outputs, finished jobs are not redone, and the artifacts equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime.helpers import store_records as records

from runtime.faults import ENV

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(store: Path, failpoint: str | None = None, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if failpoint:
        env[ENV] = failpoint
    return subprocess.run([sys.executable, "-m", "runtime.cli", "run", "specs/toy.yaml", "--until", "dataset",
                           "--workdir", str(store), "--json", *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    store = tmp_path_factory.mktemp("reference") / "store"
    assert run(store).returncode == 0
    return records(store)


def test_killed_after_outputs_before_the_record_reruns_that_job_only(tmp_path: Path, reference: dict) -> None:
    store = tmp_path / "store"
    died = run(store, "before_record:dataset")
    assert died.returncode == -signal.SIGKILL
    assert set(records(store)) == {"tokenizer"}, "the dataset's outputs without a record are not a done job"
    again = run(store)
    assert again.returncode == 0, again.stderr[-2000:]
    actions = {j["id"]: j["action"] for j in json.loads(again.stdout)["jobs"]}
    assert actions == {"tokenizer": "cached", "dataset": "ran"}
    assert records(store) == reference
    assert not any((store / "staging").iterdir())


def test_killed_after_the_record_before_the_index_is_done(tmp_path: Path, reference: dict) -> None:
    store = tmp_path / "store"
    died = run(store, "before_index:dataset")
    assert died.returncode == -signal.SIGKILL
    index = json.loads((store / "index" / "toy-worker.json").read_text())
    assert "dataset" not in index and "tokenizer" in index
    again = run(store)
    assert again.returncode == 0, again.stderr[-2000:]
    actions = {j["id"]: j["action"] for j in json.loads(again.stdout)["jobs"]}
    assert actions == {"tokenizer": "cached", "dataset": "cached"}, "the completion record is the truth"
    assert records(store) == reference


def test_killed_in_a_forced_rerun_after_the_swap_keeps_a_complete_job(tmp_path: Path, reference: dict) -> None:
    """The forced rerun's folder is swapped into place atomically; killed before the old copy
    moved to quarantine, the job is complete (the new copy) and the old copy is staging litter."""
    store = tmp_path / "store"
    assert run(store).returncode == 0
    died = run(store, "after_swap:dataset", "--force", "dataset")
    assert died.returncode == -signal.SIGKILL
    assert records(store) == reference, "the job folder is never missing or partial"
    assert len(list((store / "staging").iterdir())) == 1, "the old copy waits at the staging path"
    again = run(store)
    assert again.returncode == 0, again.stderr[-2000:]
    actions = {j["id"]: j["action"] for j in json.loads(again.stdout)["jobs"]}
    assert actions == {"tokenizer": "cached", "dataset": "cached"}
    assert not any((store / "staging").iterdir())


def test_a_forced_rerun_quarantines_the_old_copy(tmp_path: Path, reference: dict) -> None:
    store = tmp_path / "store"
    assert run(store).returncode == 0
    assert run(store, None, "--force", "dataset").returncode == 0
    assert records(store) == reference
    assert len(list((store / "quarantine").iterdir())) == 1
    assert not any((store / "staging").iterdir())

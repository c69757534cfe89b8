"""`modelspec run` / `status` on a real store: caching, corruption, the lock, signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.store import Store

ROOT = Path(__file__).resolve().parents[2]
TOY = "specs/toy.yaml"


def modelspec(*args: str, workdir: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "runtime.cli", *args, "--workdir", str(workdir)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def summary(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A store where tokenizer and dataset ran once."""
    store = tmp_path_factory.mktemp("store") / ".modelspec"
    first = summary(modelspec("run", TOY, "--until", "dataset", "--json", workdir=store))
    assert first["ok"] and [(j["id"], j["action"]) for j in first["jobs"]] == [("tokenizer", "ran"), ("dataset", "ran")]
    for job in first["jobs"]:
        assert set(job) >= {"id", "kind", "action", "seconds", "outputs"}
        assert all(Path(p).exists() for p in job["outputs"].values())
    return store


@pytest.fixture()
def store(built, tmp_path) -> Path:
    copy = tmp_path / ".modelspec"
    shutil.copytree(built, copy)
    return copy


def test_second_run_executes_nothing(store):
    again = summary(modelspec("run", TOY, "--until", "dataset", "--json", workdir=store))
    assert [j["action"] for j in again["jobs"]] == ["cached", "cached"]


def test_status_reports_states_and_reasons(store):
    states = {j["id"]: j for j in summary(modelspec("status", TOY, "--json", workdir=store))["jobs"]}
    assert states["tokenizer"]["state"] == states["dataset"]["state"] == "up_to_date"
    assert states["train"]["state"] == "missing"
    edited = summary(modelspec("status", TOY, "--json", "--set", "data.tool_registry=data/toy/train.jsonl", workdir=store))
    dataset = next(j for j in edited["jobs"] if j["id"] == "dataset")
    assert dataset["state"] == "stale" and any("tool_registry" in r for r in dataset["reasons"]), dataset


def test_corrupt_output_is_detected_quarantined_and_rerun(store):
    record = Store(store).index("toy-worker")["dataset"]
    target = store / "jobs" / "dataset" / record["key"] / "data" / "train-00000.safetensors"
    with open(target, "ab") as fh:
        fh.write(b"\0")
    states = {j["id"]: j for j in summary(modelspec("status", TOY, "--json", workdir=store))["jobs"]}
    assert states["dataset"]["state"] == "stale"
    assert states["dataset"]["reasons"] == ["output 'data' missing or corrupt"]
    proc = modelspec("run", TOY, "--until", "dataset", "--json", workdir=store)
    assert [j["action"] for j in summary(proc)["jobs"]] == ["cached", "ran"]
    quarantined = list((store / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith(record["key"])
    assert "quarantined" in proc.stderr
    assert summary(modelspec("run", TOY, "--until", "dataset", "--json", workdir=store))["jobs"][1]["action"] == "cached"


def test_a_second_run_waits_for_the_lock(store):
    with Store(store).lock():
        proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", TOY, "--until", "dataset", "--json",
                                 "--workdir", str(store)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert proc.poll() is None, "the second run did not wait for the lock"
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "waiting for another modelspec run" in err
    assert [j["action"] for j in json.loads(out)["jobs"]] == ["cached", "cached"]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_removes_staging_releases_the_lock_and_the_next_run_resumes(tmp_path, signum, code):
    store = tmp_path / ".modelspec"
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", TOY, "--until", "dataset", "--workdir", str(store)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (store / "staging").is_dir() or not any((store / "staging").iterdir()):
        time.sleep(0.05)
        assert proc.poll() is None and time.time() < deadline, "the run never started a job"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert not any((store / "staging").iterdir())
    # a job that finished before the signal landed is complete (its record verifies); the one
    # that was interrupted left nothing under jobs/
    s = Store(store)
    done = [(kind.name, key.name) for kind in (store / "jobs").iterdir() for key in kind.iterdir()]
    assert all(s.record(kind, key) is not None and not s.verify(kind, key, s.record(kind, key)) for kind, key in done)
    assert len(done) < 2, "the signal arrived after both jobs had finished"
    again = summary(modelspec("run", TOY, "--until", "dataset", "--json", workdir=store))  # the lock is free
    actions = [j["action"] for j in again["jobs"]]
    assert actions[-1] == "ran" and actions[0] == ("cached" if done else "ran")


def test_plan_cache_is_keyed_by_spec_bytes_and_survives_a_broken_entry(tmp_path):
    from runtime import plan as plan_mod

    spec = tmp_path / "toy.yaml"
    spec.write_text((ROOT / TOY).read_text())
    shutil.copytree(ROOT / "specs" / "data", tmp_path / "data")
    store = tmp_path / "store"
    first, _ = plan_mod.load(str(spec), [], store)
    entries = list((store / "plans").iterdir())
    assert len(entries) == 1
    again, _ = plan_mod.load(str(spec), [], store)
    assert again == first and len(list((store / "plans").iterdir())) == 1
    entries[0].write_text("{not json")
    assert plan_mod.load(str(spec), [], store)[0] == first  # a broken entry is recompiled, not trusted
    spec.write_text(spec.read_text().replace("lr: 3.0e-3", "lr: 1.0e-3"))
    edited, _ = plan_mod.load(str(spec), [], store)
    assert len(list((store / "plans").iterdir())) == 2
    assert edited.job("train").fingerprint != first.job("train").fingerprint
    assert edited.job("teacher").fingerprint == first.job("teacher").fingerprint
    overridden, _ = plan_mod.load(str(spec), ["training.optimizer.lr=0.003"], store)
    assert overridden.job("train").fingerprint == first.job("train").fingerprint


def test_an_invalid_spec_writes_nothing_not_even_the_store(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text((ROOT / TOY).read_text().replace("n_heads: 4", "n_heads: four"))
    store = tmp_path / "store"
    proc = modelspec("run", str(spec), "--allow-stale", workdir=store, check=False)
    assert proc.returncode == 2 and "architecture.n_heads" in proc.stderr
    assert not store.exists()

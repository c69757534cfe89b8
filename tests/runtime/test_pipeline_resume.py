"""`modelspec run` of a small copy of the toy spec through eval: SIGKILL resume, edits, caching.

Slow (real tokenizer, dataset, teacher, KD, QAT and eval jobs in worker processes), still run
in CI.
"""

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
import torch
from safetensors.torch import load_file

from runtime.store import Store

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
NAME = "tiny-worker"


def tiny_spec(folder: Path) -> Path:
    """specs/toy.yaml made small: a 2-layer teacher, 60 student steps, checkpoints every 10, no data.prompts,
    export.parity at its defaults."""
    text = (ROOT / "specs" / "toy.yaml").read_text()
    edits = [
        ("name: toy-worker", f"name: {NAME}"),
        ("teacher:\n  kind: train\n  architecture: {d_model: 192, n_layers: 3, n_heads: 6, n_kv_heads: 2, d_head: 32, mlp: {kind: swiglu, hidden: 512}}",
         "teacher:\n  kind: train\n  architecture: {d_model: 64, n_layers: 2, n_heads: 2, n_kv_heads: 1, d_head: 32, mlp: {kind: swiglu, hidden: 128}}"),
        ("  steps: 300\n  micro_batch: 16\n  seq_len: 128", "  steps: 20\n  micro_batch: 8\n  seq_len: 64"),
        ("  steps: 400\n  micro_batch: 16", "  steps: 60\n  micro_batch: 4"),
        ("lr_schedule: {warmup_steps: 20,", "lr_schedule: {warmup_steps: 5,"),
        ("    - {until_step: 200, seq_len: 64}\n    - {until_step: 400, seq_len: 128}", "    - {until_step: 60, seq_len: 64}"),
        ("checkpoint_every: 100", "checkpoint_every: 10"),
        ("start_fraction: 0.8", "start_fraction: 0.5"),
        ("steps: 100}}, within_tokens", "steps: 20}}, within_tokens"),
        # a 20-step teacher cannot answer the prompts in the toy's format: the generate stage runs in the
        # toy's end-to-end test (tests/test_toy_end_to_end.py) and tests/generation/test_local.py
        ("  prompts: data/toy/prompts.jsonl   # the teacher's transcripts of these join the train split\n", ""),
        ('  - {metric: generate.fixture_hit_rate, op: ">=", value: 0.9, min_n: 50}\n', ""),
        ("  parity: {lengths: all, positions: all, decode_steps: 16}", "  parity: {}"),  # export.parity's defaults: smallest length, 64 positions
        ("cache_len: 256, verify_k: 4}", "cache_len: 256}"),  # no verify function (tests/runtime/test_verify_function.py)
    ]
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    shutil.copytree(ROOT / "specs" / "data", folder / "data")
    path = folder / "tiny.yaml"
    path.write_text(text)
    return path


def cli(*args: str, workdir: Path, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "runtime.cli", *args, "--workdir", str(workdir)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def weights(store: Path, job: str) -> dict[str, torch.Tensor]:
    key = Store(store).index(NAME)[job]["key"]
    return load_file(str(store / "jobs" / job / key / "checkpoint" / "model.safetensors"))


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    return tiny_spec(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def full(tiny_run) -> Path:
    """An uninterrupted run through eval (and convert): the session's shared tiny run, only read here."""
    assert {j["action"] for j in tiny_run.jobs} == {"ran"}
    assert [j["id"] for j in tiny_run.jobs][:5] == ["tokenizer", "dataset", "teacher", "train", "qat"]
    assert {"eval", "convert"} <= {j["id"] for j in tiny_run.jobs}
    return tiny_run.store


def test_second_run_executes_nothing(spec, full):
    out = json.loads(cli("run", str(spec), "--until", "eval", "--allow-stale", "--json", workdir=full).stdout)
    assert {j["action"] for j in out["jobs"]} == {"cached"}


def test_sigkill_during_training_resumes_to_identical_weights(spec, full, tmp_path):
    store = tmp_path / "store"
    work = store / "work" / NAME / "train"
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(spec), "--until", "train", "--allow-stale",
                             "--workdir", str(store)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 600
    while not list(work.glob("ckpt-*")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no training checkpoint appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the parent only: its workers die with it (PDEATHSIG)
    proc.wait(timeout=60)
    proc.stderr.close()
    time.sleep(1.0)
    assert not (store / "jobs" / "train").exists(), "a killed training job must not count as done"
    assert list(work.glob("ckpt-*"))
    rerun = cli("run", str(spec), "--until", "train", "--allow-stale", "--json", workdir=store)
    actions = {j["id"]: j["action"] for j in json.loads(rerun.stdout)["jobs"]}
    assert actions == {"tokenizer": "cached", "dataset": "cached", "teacher": "cached", "train": "ran"}
    assert "resuming from the checkpoint at step" in rerun.stderr
    key = Store(store).index(NAME)["train"]["key"]
    report = json.loads((store / "jobs" / "train" / key / "report.json").read_text())
    assert report["resumed_from"] and report["resumed_from"] > 0
    a, b = weights(full, "train"), weights(store, "train")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not work.exists(), "the work folder is dropped once the job completed"


def stale(spec: Path, store: Path, *sets: str) -> set[str]:
    args = [a for s in sets for a in ("--set", s)]
    states = json.loads(cli("status", str(spec), "--json", *args, workdir=store).stdout)["jobs"]
    return {s["id"] for s in states if s["state"] == "stale"}


# the shared run converted the package too: every job downstream of qat that ran
PACKAGE = {"export-prefill-64", "export-prefill-128", "export-prefill-256", "export-decode", "convert"}


@pytest.mark.parametrize("edit, expected", [
    ("gates[2].value=0.85", set()),  # gates never ran here; no job that ran reads gates
    ("description=a different description", {"convert"}),  # the package's short description
    ("quantization.weights.rules[1].block_size=16", {"qat", "eval"} | PACKAGE),
    ("training.optimizer.lr=0.001", {"train", "qat", "eval"} | PACKAGE),
    ("teacher.steps=25", {"teacher", "train", "qat", "eval"} | PACKAGE),
])
def test_edits_make_exactly_the_right_jobs_stale(spec, full, edit, expected):
    assert stale(spec, full, edit) == expected


def test_status_names_the_changed_value(spec, full):
    states = json.loads(cli("status", str(spec), "--json", "--set", "training.optimizer.lr=0.001", workdir=full).stdout)["jobs"]
    train = next(s for s in states if s["id"] == "train")
    assert "param training.optimizer.lr: 0.003 -> 0.001" in train["reasons"]
    qat = next(s for s in states if s["id"] == "qat")
    assert any("upstream 'train' changed" in r for r in qat["reasons"])

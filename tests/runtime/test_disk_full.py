"""Disk full while a job writes (simulated with RLIMIT_FSIZE: a write past the limit fails with
EFBIG, as it would with ENOSPC): the run fails cleanly, nothing partial counts as done, and a
rerun with room completes with the same artifacts as an uninterrupted run."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime.helpers import store_records as records

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 2 << 20  # 2 MiB: the tokenizer (32 KB) fits, the dataset (8 MB of tensors) does not
pytestmark = pytest.mark.slow


def _limited() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def run(store: Path, limited: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", "run", "specs/toy.yaml", "--until", "dataset", "--workdir",
                           str(store), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          preexec_fn=_limited if limited else None)


def test_a_full_disk_fails_the_job_cleanly_and_the_rerun_completes(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert run(reference, limited=False).returncode == 0
    store = tmp_path / "store"
    full = run(store, limited=True)
    assert full.returncode == 1, full.stderr[-2000:]
    actions = {j["id"]: j["action"] for j in json.loads(full.stdout)["jobs"]}
    assert actions == {"tokenizer": "ran", "dataset": "failed"}
    assert set(records(store)) == {"tokenizer"}, "the dataset's partial outputs are not a done job"
    assert not any((store / "staging").iterdir()), "the failed job's staging is removed"
    again = run(store, limited=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {j["id"]: j["action"] for j in json.loads(again.stdout)["jobs"]} == {"tokenizer": "cached", "dataset": "ran"}
    assert records(store) == records(reference)


def test_a_full_disk_while_writing_a_checkpoint_leaves_no_checkpoint(tmp_path: Path) -> None:
    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from runtime.train import checkpoints\n"
        "work = Path(sys.argv[1])\n"
        "try:\n"
        "    from runtime.distributed.world import join\n"
        "    model = torch.nn.Linear(1024, 1024)\n"
        "    checkpoints.save(work, 10, model, torch.optim.AdamW(model.parameters()), join({'device': 'cpu', 'strategy': 'none'}), {'key': 'k'})\n"
        "except Exception as exc:  # OSError, or safetensors' wrapper of it\n"
        "    print('failed:', exc)\n"
        "    sys.exit(7)\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", code, str(work)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, preexec_fn=_limited, env={**os.environ})
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert not list(work.glob("ckpt-*")), "no checkpoint counts as written"
    from runtime.train import checkpoints

    import torch

    from runtime.distributed.world import join

    model = torch.nn.Linear(1024, 1024)
    one = join({"device": "cpu", "strategy": "none"})
    assert checkpoints.load_latest(work, model, torch.optim.AdamW(model.parameters()), one, "k", {}, {}, False,
                                   "train") is None  # the partial .ckpt-tmp is cleared
    assert not list(work.glob(".ckpt-tmp-*"))


def test_a_full_disk_while_writing_the_package_keeps_the_old_one(tiny_run, tmp_path: Path) -> None:
    """A forced reconversion that runs out of room (the weight file is 0.5 MB, the limit 256 KB)
    fails; the package already in the store stays complete and verified. The toy's student with a small teacher
    and short training (the session's shared tiny run, copied): the same package size, minutes less."""
    run = tiny_run.copy(tmp_path)
    store, spec = run.store, run.spec
    base = [sys.executable, "-m", "runtime.cli", "run", str(spec), "--until", "convert", "--allow-stale", "--workdir", str(store), "--json"]
    first = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert {j["action"] for j in json.loads(first.stdout)["jobs"]} == {"cached"}, "the copied store is complete"
    before = records(store)["convert"]

    def tiny() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))

    full = subprocess.run([*base, "--force", "convert"], cwd=ROOT, capture_output=True, text=True, timeout=900, preexec_fn=tiny)
    assert full.returncode == 1, full.stderr[-2000:]
    assert {j["id"]: j["action"] for j in json.loads(full.stdout)["jobs"]}["convert"] == "failed"
    assert records(store)["convert"] == before, "the earlier package is untouched"
    assert not any((store / "staging").iterdir())
    # with room again the rerun completes: shown for the dataset above; a third conversion here would add 25 s

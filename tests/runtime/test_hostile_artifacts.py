"""Hostile artifacts are refused without executing anything: a pickle with `__reduce__` where
optimizer state is expected, crafted safetensors headers where weights are expected."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch

from runtime.model.checkpoint import load_student
from runtime.train import checkpoints


class Evil:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _checkpoint(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    model = {"w": torch.ones(2, 2)}
    return checkpoints.save(work, 10, model, {"state": {}, "param_groups": []},
                            {"key": "k", "params": {}, "upstream": {}, "step": 10})


def test_a_pickle_with_reduce_as_optimizer_state_is_refused_and_never_run(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    folder = _checkpoint(tmp_path / "work")
    (folder / "optimizer.pt").write_bytes(pickle.dumps(Evil(sentinel)))
    with pytest.raises(checkpoints.CheckpointMismatch, match="unreadable checkpoint"):
        checkpoints.load_latest(tmp_path / "work", "k", {}, {}, False, "train")
    assert not sentinel.exists(), "torch.load(weights_only=True) must not run the pickle"
    assert not folder.exists(), "the unreadable checkpoint is removed, never resumed from"


def _safetensors(header: dict | bytes, length: int | None = None, body: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", length if length is not None else len(raw)) + raw + body


@pytest.mark.parametrize("blob", [
    _safetensors({}, length=1 << 62),  # header length far past the file
    _safetensors({"embed_tokens.weight": {"dtype": "F32", "shape": [512, 128], "data_offsets": [0, 262144]}}),  # data past the end
    _safetensors({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}, body=b"\0" * 8),  # size != shape
    _safetensors(b"{not json"),
], ids=["huge-header-length", "offsets-past-end", "size-mismatch", "header-not-json"])
def test_crafted_safetensors_headers_are_refused(tmp_path: Path, blob: bytes) -> None:
    """Every weight file is read with safetensors' `load_file` (student, teacher, checkpoints):
    it validates the header against the file before allocating anything."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = tmp_path / "model.safetensors"
    path.write_bytes(blob)
    with pytest.raises(SafetensorError):
        load_file(str(path))
    good = {"architecture": None}
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(blob)
    (folder / "record.json").write_text(json.dumps(good))
    with pytest.raises(Exception) as info:  # whichever check trips first, nothing is loaded
        load_student(folder)
    assert not isinstance(info.value, MemoryError)


@pytest.mark.slow
def test_a_symlink_planted_at_a_job_folder_is_not_trusted(tmp_path: Path) -> None:
    """A forged job folder (a symlink to a folder with a made-up completion record) is neither
    taken as done nor written through: the job reruns and the link is moved to quarantine."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "runtime.cli", "run", "specs/toy.yaml", "--until", "tokenizer", "--workdir", str(store), "--json"]
    first = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    (job,) = list((store / "jobs" / "tokenizer").iterdir())
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "report.json").write_text("{}")
    record = json.loads((job / "_complete.json").read_text())
    record["outputs"] = {"report": {"path": "report.json", "sha256": "0" * 64, "bytes": 2}}
    (forged / "_complete.json").write_text(json.dumps(record))
    real = tmp_path / "real-output"
    job.rename(real)
    job.symlink_to(forged, target_is_directory=True)
    again = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [j["action"] for j in json.loads(again.stdout)["jobs"]] == ["ran"]
    assert job.is_dir() and not job.is_symlink(), "the job's folder is real again"
    assert sorted(p.name for p in forged.iterdir()) == ["_complete.json", "report.json"], "nothing written through the link"
    assert any(p.is_symlink() for p in (store / "quarantine").iterdir())

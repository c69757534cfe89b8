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


def _one_process():
    from runtime.distributed.world import join

    return join({"device": "cpu", "strategy": "none"})


def _model_and_optimizer():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    return model, optimizer


def _checkpoint(work: Path) -> tuple[Path, torch.nn.Module, torch.optim.Optimizer]:
    work.mkdir(parents=True, exist_ok=True)
    model, optimizer = _model_and_optimizer()
    folder = checkpoints.save(work, 10, model, optimizer, _one_process(), {"key": "k", "params": {}, "upstream": {}})
    return folder, model, optimizer


def test_a_pickle_with_reduce_as_checkpoint_metadata_is_refused_and_never_run(tmp_path: Path) -> None:
    """DCP's `.metadata` is a pickle: it is read by an allow-list unpickler, never by pickle.load."""
    sentinel = tmp_path / "pwned"
    folder, _, _ = _checkpoint(tmp_path / "work")
    (folder / ".metadata").write_bytes(pickle.dumps(Evil(sentinel)))
    model, optimizer = _model_and_optimizer()
    with pytest.raises(checkpoints.CheckpointMismatch, match="unreadable checkpoint"):
        checkpoints.load_latest(tmp_path / "work", model, optimizer, _one_process(), "k", {}, {}, False, "train")
    assert not sentinel.exists(), "the metadata unpickler must not run the pickle"
    assert not folder.exists(), "the unreadable checkpoint is removed, never resumed from"


def test_a_checkpoint_loads_back_exactly(tmp_path: Path) -> None:
    folder, saved, saved_opt = _checkpoint(tmp_path / "work")
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    assert not torch.equal(model.weight, saved.weight)
    resumed = checkpoints.load_latest(tmp_path / "work", model, optimizer, _one_process(), "k", {}, {}, False, "train")
    assert resumed is not None and resumed.step == 10 and folder.name == "ckpt-00000010"
    assert torch.equal(model.weight, saved.weight) and torch.equal(model.bias, saved.bias)
    state, want = optimizer.state[model.weight], saved_opt.state[saved.weight]
    assert torch.equal(state["exp_avg_sq"], want["exp_avg_sq"]) and float(state["step"]) == 1.0


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

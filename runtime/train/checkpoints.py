"""Resumable training checkpoints in the job's work folder.

    <work>/ckpt-00000100/   model.safetensors (latent fp32 weights, canonical names)
                            optimizer.pt      (optimizer state_dict; loaded with weights_only=True)
                            rng.safetensors   (torch CPU and CUDA generator states)
                            record.json       (step, job key and fingerprint, params, data cursor)

A checkpoint is written into a hidden temporary folder (record.json last, everything fsynced)
and renamed into place, so a folder named `ckpt-*` is always complete. The newest one whose
record reads back is resumed; a checkpoint from another fingerprint (the spec or an upstream
changed since the killed run) is refused with the differences unless the job is forced.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from runtime.diffing import diff

KEEP = 2


class CheckpointMismatch(RuntimeError):
    pass


@dataclass
class Resumed:
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]
    record: dict[str, Any]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


def rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{i}"] = s
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if torch.cuda.is_available():
        cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def save(work: Path, step: int, model: dict[str, torch.Tensor], optimizer: dict[str, Any], record: dict[str, Any]) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt-tmp-", dir=work))
    save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, str(tmp / "model.safetensors"))
    torch.save(optimizer, tmp / "optimizer.pt")
    save_file(rng_state(), str(tmp / "rng.safetensors"))
    for name in ("model.safetensors", "optimizer.pt", "rng.safetensors"):
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())
    _write_json(tmp / "record.json", dict(record, step=step))
    final = work / f"ckpt-{step:08d}"
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(work)
    for old in sorted(work.glob("ckpt-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _complete(work: Path) -> list[tuple[int, Path, dict]]:
    out = []
    for folder in work.glob("ckpt-*"):
        try:
            record = json.loads((folder / "record.json").read_text(encoding="utf-8"))
            out.append((int(record["step"]), folder, record))
        except (OSError, ValueError, KeyError):
            continue
    return sorted(out, key=lambda t: t[0])


def clear(work: Path) -> None:
    for child in work.glob("ckpt-*"):
        shutil.rmtree(child, ignore_errors=True)
    for child in work.glob(".ckpt-tmp-*"):
        shutil.rmtree(child, ignore_errors=True)


def load_latest(work: Path, key: str, params: dict, upstream: dict, force: bool, job_id: str) -> Resumed | None:
    """The newest complete checkpoint of this exact job key, or None to start fresh."""
    for child in work.glob(".ckpt-tmp-*"):  # a checkpoint the killed run did not finish
        shutil.rmtree(child, ignore_errors=True)
    found = _complete(work)
    if not found:
        return None
    step, folder, record = found[-1]
    if record.get("key") != key:
        if force:
            clear(work)
            return None
        changes = diff(record.get("params", {}), params)
        changes += [f"upstream '{u}' changed" for u in sorted(upstream) if record.get("upstream", {}).get(u) != upstream[u]]
        shown = "\n  ".join(changes[:20] or ["code version or input files changed"])
        raise CheckpointMismatch(
            f"{folder} (step {step}) was written for a different job fingerprint; it differs in:\n  {shown}\n"
            f"rerun with --force {job_id} to discard it and train from the start")
    try:
        model = load_file(str(folder / "model.safetensors"))
        optimizer = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
        rng = load_file(str(folder / "rng.safetensors"))
    except Exception as exc:  # unreadable: drop it and try the previous one
        shutil.rmtree(folder, ignore_errors=True)
        if len(found) > 1:
            return load_latest(work, key, params, upstream, force, job_id)
        raise CheckpointMismatch(f"{folder}: unreadable checkpoint ({exc}); it was removed, rerun to start fresh") from exc
    return Resumed(step, model, optimizer, rng, record)

"""Resumable training checkpoints in the job's work folder, in torch.distributed.checkpoint format.

    <work>/ckpt-00000100/   __<rank>_0.distcp   tensors, written by every rank (DCP)
                            .metadata           DCP's index: global shape and chunks of each tensor
                            record.json         step, world size, job key and fingerprint, params,
                                                data cursor; the completion marker, written last

One format for one process and for N ranks of DDP or FSDP2. DCP keeps each tensor's global
shape, so a checkpoint written by 2 ranks resumes in 1, 4, or under the other strategy. Saved:
model and optimizer state by parameter name (`get_state_dict`; no `module.` prefix), the step
and rank 0's RNG state (every rank seeds alike and draws nothing while training, so they
agree). Optimizer hyperparameters come from the params, not the checkpoint.

Atomic: every rank writes into `.ckpt-tmp-<step>/`; then rank 0 writes record.json, fsyncs
and renames the folder to `ckpt-<step>/`. A folder without record.json is never loaded. DCP's
`.metadata` is a pickle: it is read by an allow-list unpickler (DCP's metadata classes,
torch.Size, dtypes) and a checkpoint holding anything but tensors is refused, so loading never
runs code from the file. A checkpoint written under another job key is refused with the
differences unless the job is forced; the two newest are kept.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from runtime.diffing import diff
from runtime.store import fsync_dir
from runtime.distributed.world import World

KEEP = 2
FORMAT = "dcp-1"
RECORD = "record.json"
OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


class CheckpointMismatch(RuntimeError):
    pass


@dataclass
class Resumed:
    step: int
    record: dict[str, Any]


class _MetadataUnpickler(pickle.Unpickler):
    """DCP metadata only: anything else in `.metadata` is refused before it is constructed."""

    ALLOWED = {
        ("torch.distributed.checkpoint.metadata", n) for n in (
            "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
            "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")
    } | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
         ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath")}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which a DCP index never holds")


class SafeReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / ".metadata"
        metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"{path} is not a DCP metadata file")
        other = [k for k, v in metadata.state_dict_metadata.items() if not isinstance(v, TensorStorageMetadata)]
        if other:
            raise pickle.UnpicklingError(f"{path}: non-tensor entries {other[:5]} (this runtime writes tensors only)")
        metadata.storage_meta = None
        return metadata


def _rng() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what DCP saves or loads into, the full flattened optimizer state dict)."""
    msd, osd = get_state_dict(model, optimizer, options=OPTIONS)
    optim = {k: v for k, v in osd.items() if k.startswith("state.") and isinstance(v, torch.Tensor)}
    return {"model": msd, "optim": optim, "progress": {"step": torch.zeros((), dtype=torch.int64)}, "rng": _rng()}, osd


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


class CheckpointIOError(OSError):
    """DCP's CheckpointException (a BaseException) as an ordinary error, with each rank's cause."""


def _dcp(fn, state: dict, world: World, **storage: Any) -> None:
    with warnings.catch_warnings():  # DCP warns that one process means "no_dist"; that is the intent
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        try:
            fn(state, no_dist=not world.distributed, **storage)
        except CheckpointException as exc:
            causes = "; ".join(f"rank {r}: {type(e).__name__}: {e}" for r, (e, _) in sorted(exc.failures.items()))
            raise CheckpointIOError(f"checkpoint {fn.__name__} failed: {causes}") from None


def save(work: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, world: World,
         record: dict[str, Any]) -> Path:
    """Collective: every rank calls it at the same step."""
    tmp, final = work / f".ckpt-tmp-{step:08d}", work / f"ckpt-{step:08d}"
    if world.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    world.barrier()
    state, _ = _tensors(model, optimizer)
    state["progress"]["step"].fill_(step)
    _dcp(dcp.save, state, world, storage_writer=FileSystemWriter(tmp, sync_files=True))
    if world.main:
        _write_json(tmp / RECORD, dict(record, step=step, format=FORMAT, world_size=world.size, strategy=world.strategy))
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(work)
        for old in sorted(work.glob("ckpt-*"))[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    world.barrier()
    return final


def _complete(work: Path) -> list[tuple[int, Path, dict]]:
    out = []
    for folder in work.glob("ckpt-*"):
        try:
            record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
            if record.get("format") == FORMAT and (folder / ".metadata").is_file():
                out.append((int(record["step"]), folder, record))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda t: t[0])


def clear(work: Path) -> None:
    for child in [*work.glob("ckpt-*"), *work.glob(".ckpt-tmp-*")]:
        shutil.rmtree(child, ignore_errors=True)


def _choose(work: Path, key: str, params: dict, upstream: dict, force: bool, job_id: str) -> dict | None:
    """Rank 0's decision: the newest complete checkpoint of this job key, None, or an error."""
    for child in work.glob(".ckpt-tmp-*"):  # a checkpoint the killed run did not finish
        shutil.rmtree(child, ignore_errors=True)
    found = _complete(work)
    if not found:
        return None
    step, folder, record = found[-1]
    if record.get("key") == key:
        return {"step": step, "folder": str(folder), "record": record}
    if force:
        clear(work)
        return None
    changes = diff(record.get("params", {}), params)
    changes += [f"upstream '{u}' changed" for u in sorted(upstream) if record.get("upstream", {}).get(u) != upstream[u]]
    shown = "\n  ".join(changes[:20] or ["code version or input files changed"])
    return {"error": f"{folder} (step {step}) was written for a different job fingerprint; it differs in:\n  {shown}\n"
                     f"rerun with --force {job_id} to discard it and train from the start"}


def _load(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, world: World) -> int:
    state, osd = _tensors(model, optimizer)
    _dcp(dcp.load, state, world, storage_reader=SafeReader(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict={**osd, **state["optim"]},
                   options=OPTIONS)
    torch.set_rng_state(state["rng"]["cpu"])
    if "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    return int(state["progress"]["step"])


def load_latest(work: Path, model: nn.Module, optimizer: torch.optim.Optimizer, world: World, key: str,
                params: dict, upstream: dict, force: bool, job_id: str) -> Resumed | None:
    """Collective: loads the newest complete checkpoint of this exact job key into model and optimizer."""
    choice = world.share(_choose(work, key, params, upstream, force, job_id) if world.main else None)
    if choice is None:
        return None
    if "error" in choice:
        raise CheckpointMismatch(choice["error"])
    folder = Path(choice["folder"])
    try:
        step = _load(folder, model, optimizer, world)
    except Exception as exc:  # the model may be half loaded: drop the checkpoint, let the rerun decide
        world.barrier()
        if world.main:
            shutil.rmtree(folder, ignore_errors=True)
        raise CheckpointMismatch(f"{folder}: unreadable checkpoint ({type(exc).__name__}: {exc}); it was removed, "
                                 "rerun to resume from the one before (or from the start)") from exc
    if step != choice["step"]:
        raise CheckpointMismatch(f"{folder}: record.json says step {choice['step']}, the tensors say {step}; "
                                 f"rerun with --force {job_id} to train from the start")
    return Resumed(step, choice["record"])

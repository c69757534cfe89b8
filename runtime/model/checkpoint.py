"""The student checkpoint folder every downstream job reads (train, qat -> export, eval, parity).

Layout of a checkpoint folder:

    model.safetensors   Student state dict, canonical module names (`layers.0.mlp.up_proj.weight`),
                        fp32; for a QAT checkpoint the weights are the fake-quantized values
                        (quantize-dequantize baked in), i.e. exactly what the converter quantizes
    record.json         {"format": 1, "architecture": {...ArchitectureP}, "step": int,
                         "quantized": bool, "provenance": {...}}

Optimizer state and RNG states live only in the resumable training checkpoints under the job's
work folder (see `runtime.train.checkpoints`), not here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from compiler.planning.params import ArchitectureP

from .student import Student

FORMAT = 1
WEIGHTS = "model.safetensors"
RECORD = "record.json"


def save_student(folder: Path, state_dict: Mapping[str, Tensor], arch: ArchitectureP, step: int,
                 quantized: bool, provenance: dict[str, Any]) -> None:
    """Write a checkpoint folder (the caller stages it; the store makes it atomic)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sorted(state_dict.items())}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": str(FORMAT)})
    record = {"format": FORMAT, "architecture": arch.model_dump(mode="json"), "step": step, "quantized": quantized,
              "provenance": provenance}
    (folder / RECORD).write_text(json.dumps(record, sort_keys=True, indent=2) + "\n", encoding="utf-8")


def read_record(folder: Path) -> dict[str, Any]:
    record = json.loads((Path(folder) / RECORD).read_text(encoding="utf-8"))
    if record.get("format") != FORMAT:
        raise ValueError(f"{folder}: checkpoint format {record.get('format')!r}, this runtime reads {FORMAT}")
    return record


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Every tensor of a safetensors file, each copied out of a map of the file opened for it alone.
    safetensors hands out tensors backed by a private map of the whole file: reading them counts the
    file's pages in the resident set, and writing them (parity writes the package's weights into the
    model) copies each page on write, so the model sat in memory twice (8.8 GiB at 1.1B parameters)."""
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        names = list(f.keys())
    out: dict[str, Tensor] = {}
    for name in names:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            out[name] = f.get_tensor(name).clone()
    return out


def load_student(folder: Path, arch: ArchitectureP | None = None, device: str | torch.device = "cpu") -> Student:
    """The Student in a checkpoint folder; `arch` (from the job's params) must match the record's."""
    record = read_record(folder)
    recorded = ArchitectureP.model_validate(record["architecture"], strict=False)
    if arch is not None and arch != recorded:
        raise ValueError(f"{folder}: checkpoint architecture {recorded.model_dump()} differs from the job's {arch.model_dump()}")
    # built on the meta device and given the loaded tensors: the model is in memory once, not a random
    # initialisation plus the checkpoint (twice 4.4 GB at 1.1B parameters)
    model = Student(arch or recorded, seed=0, device="meta")
    state = load_tensors(Path(folder) / WEIGHTS, device)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{folder}: checkpoint does not fit the architecture (missing {missing}, unexpected {unexpected})")
    wrong = [f"{k} {tuple(v.shape)}" for k, v in state.items() if v.dtype != torch.float32]
    if wrong:
        raise ValueError(f"{folder}: checkpoint tensors are not float32: {wrong[:5]}")
    model.eval()
    return model

"""Test fixtures for the training jobs: a toy dataset built by the real jobs and teacher targets.

The targets come from a small randomly initialised Student used as the teacher (a real model
and real top-k logits in the teacher job's format), so trainer tests do not depend on the
teacher job's training time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from runtime.data.shards import read_split

from compiler.planning.params import ArchitectureP, TrainingP
from runtime.model.student import Student


def topk_targets(data_dir: Path, out_dir: Path, arch: ArchitectureP, k: int = 8, seed: int = 7) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher = Student(arch, seed=seed).eval()
    index = {"top_k": k, "splits": {}}
    for split in ("train", "val"):
        data = read_split(data_dir, split)
        ids, att = data["input_ids"].long(), data["attention_mask"].long()
        t = int(att.sum(1).max())
        with torch.no_grad():
            logits = teacher(ids[:, :t], att[:, :t])
        top = logits.topk(k, dim=-1)
        keep = att[:, :t, None].bool()
        save_file({"topk_ids": (top.indices * keep).to(torch.int32).contiguous(),
                   "topk_logits": (top.values * keep).float().contiguous()}, str(out_dir / f"{split}.safetensors"))
        index["splits"][split] = {"rows": ids.shape[0], "T": t}
    (out_dir / "index.json").write_text(json.dumps(index))
    return out_dir


def training_params(base: TrainingP, **changes) -> TrainingP:
    return TrainingP.model_validate(base.model_dump() | changes, strict=False)


class Killed(Exception):
    """Raised from a test's progress hook to stop a training job as a kill would."""


def kd_inputs(data_dir: Path, folder: Path, arch: ArchitectureP) -> dict[str, dict[str, Path]]:
    """The train job's inputs: the toy dataset and top-8 teacher targets written into `folder`."""
    return {"dataset": {"data": data_dir}, "teacher": {"targets": topk_targets(data_dir, folder, arch, k=8)}}

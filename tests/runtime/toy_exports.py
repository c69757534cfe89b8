"""Shared by the export and convert job tests: the compiled toy plan, a QAT-like toy checkpoint
(random weights with the plan's fake quantization baked in) and running the export jobs."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from compiler.output.build import compile_one
from compiler.planning.compile import Compiled
from runtime.model.checkpoint import save_student
from runtime.model.fakequant import attach_fake_quant, remove_fake_quant
from runtime.model.student import Student

from .helpers import SPECS, Ctx

PROVENANCE = {
    "spec": {"name": "toy-worker", "version": "1.0.0", "hash": "spec-hash-for-tests"},
    "job": {"id": "test-job", "kind": "test", "fingerprint": "fp-test-job", "key": "key-test-job"},
    "upstream": {"qat": {"fingerprint": "fp-qat", "key": "key-qat"}},
}


@lru_cache(maxsize=None)
def toy(*overrides: str) -> Compiled:
    return compile_one(str(SPECS / "toy.yaml"), list(overrides))


@torch.no_grad()
def qat_student(compiled: Compiled, seed: int = 7) -> Student:
    """Toy student with larger-than-init random weights and the plan's quantization baked in."""
    params = compiled.job("qat").job.params
    model = Student(params.training.architecture, seed=0)
    g = torch.Generator().manual_seed(seed)
    for _, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        p.copy_(1.0 + 0.2 * noise if p.ndim == 1 else 0.08 * noise)
    attach_fake_quant(model, params.quantization)
    remove_fake_quant(model, bake=True)
    return model.eval()


def save_checkpoint(compiled: Compiled, folder: Path, seed: int = 7) -> Path:
    model = qat_student(compiled, seed)
    save_student(folder, model.state_dict(), model.arch, step=400, quantized=True, provenance={"test": True})
    return folder


def run_export(compiled: Compiled, job_id: str, checkpoint: Path, root: Path) -> dict[str, Path]:
    """Run one export job into root/job_id; returns its outputs as the executor passes them on."""
    from runtime.jobs import export

    out = root / job_id
    out.mkdir(parents=True, exist_ok=True)
    export.run(compiled.job(job_id).job.params, {"qat": {"checkpoint": checkpoint}}, out, Ctx(work_dir=root, provenance=PROVENANCE))
    return {"program": out / "program.pt2", "report": out / "report.json"}


def export_all(compiled: Compiled, checkpoint: Path, root: Path) -> dict[str, dict[str, Any]]:
    """Every export job of the plan -> the inputs dict the convert job receives (plus a tokenizer)."""
    inputs: dict[str, dict[str, Any]] = {}
    for job_id in compiled.job("convert").job.needs:
        if job_id.startswith("export-"):
            inputs[job_id] = run_export(compiled, job_id, checkpoint, root)
    tokenizer = root / "tokenizer"
    tokenizer.mkdir(exist_ok=True)
    (tokenizer / "tokenizer.json").write_text('{"stand-in": "tokenizer for the fingerprint"}\n', encoding="utf-8")
    inputs["tokenizer"] = {"tokenizer": tokenizer}
    return inputs

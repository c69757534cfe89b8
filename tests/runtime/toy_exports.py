"""Shared by the export and convert job tests: the compiled toy plan, a QAT-like toy checkpoint
(random weights with the plan's fake quantization baked in) and running the export jobs."""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

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


def shared_dir(factory: Any) -> Path:
    """A folder every pytest-xdist worker of this session sees (the session's own one without xdist)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def convert_provenance(inputs: dict) -> dict:
    upstream = {job: {"fingerprint": f"fp-{job}", "key": f"key-{job}"} for job in inputs}
    return dict(PROVENANCE, job={"id": "convert", "kind": "convert", "fingerprint": "fp-convert", "key": "k"}, upstream=upstream)


def run_convert(compiled: Compiled, inputs: dict, out: Path) -> dict:
    """One convert job of `compiled` into `out` (created); its metrics."""
    from runtime.jobs import convert

    out.mkdir(parents=True)
    params = compiled.job("convert").job.params
    return convert.run(params, inputs, out, Ctx(work_dir=out.parent, provenance=convert_provenance(inputs)))


def export_inputs_of(root: Path) -> dict[str, dict[str, Path]]:
    """The convert job's inputs as `toy_build` left them under root."""
    out = {job: {"program": root / job / "program.pt2", "report": root / job / "report.json"}
           for job in toy().job("convert").job.needs if job.startswith("export-")}
    return out | {"tokenizer": {"tokenizer": root / "tokenizer"}}


def toy_build(factory: Any) -> Path:
    """The toy's QAT-like checkpoint, its exports and their conversion, built once per test session
    (across pytest-xdist workers too: the verify and the convert tests share it). Layout under the
    returned root: checkpoint/, tokenizer/ (a stand-in), export-*/, convert/ (report.json,
    metrics.json, <name>.mlpackage)."""
    root = shared_dir(factory) / "toy-build"
    with locked(root / ".lock"):
        if not (root / "done.json").exists():
            checkpoint = save_checkpoint(toy(), root / "checkpoint")
            inputs = export_all(toy(), checkpoint, root)
            metrics = run_convert(toy(), inputs, root / "convert")
            (root / "convert" / "metrics.json").write_text(json.dumps(metrics))
            (root / "done.json").write_text(json.dumps({"package": f"convert/{toy().job('convert').job.params.name}.mlpackage"}))
    return root

"""What the `train` and `qat` jobs share: load data, build the model, run the loop, write outputs.

Every rank of a distributed run executes `_train_here`; rank 0 alone evaluates and writes the
job's outputs, from the whole model gathered onto it (runtime.distributed.launch says who
starts the ranks).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from compiler.planning.params import QatParams, TrainParams
from runtime.distributed.launch import run_or_launch
from runtime.distributed.parallel import full_state, wrap
from runtime.distributed.world import World, accumulation, join
from runtime.model.checkpoint import load_student, read_record, save_student
from runtime.model.fakequant import attach_fake_quant, remove_fake_quant
from runtime.model.pretrained import load_pretrained
from runtime.model.student import Student

from .data import load_split, with_extra_rows
from .loop import Trainer, evaluate, make_optimizer, seed_everything
from .metrics import run_dir
from .precision import fsdp_policy


def _write_report(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, sort_keys=True, indent=2) + "\n", encoding="utf-8")


def run_stage(params: TrainParams | QatParams, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any, stage: str) -> dict:
    tp = params.training
    return run_or_launch(stage, params, inputs, out, ctx, check=lambda size: accumulation(tp.global_batch, tp.micro_batch, size),
                         body=lambda: _train_here(params, inputs, out, ctx, stage))


def _student(params: TrainParams | QatParams, inputs: dict[str, dict[str, Path]], device: torch.device,
             ctx: Any) -> tuple[Student, int, dict | None]:
    """The model to train (the KD checkpoint with fake quantization attached for QAT; the pretrained
    checkpoint of training.init, or seeded random weights, for KD), the fake-quantized count and
    what the weights started from (recorded in the checkpoint's provenance, then the package's)."""
    tp = params.training
    if isinstance(params, QatParams):
        model = load_student(inputs["train"]["checkpoint"], arch=tp.architecture, device=device)
        init = read_record(inputs["train"]["checkpoint"]).get("provenance", {}).get("init")
        return model, attach_fake_quant(model, params.quantization), init
    model = Student(tp.architecture, seed=tp.seed, device=device)
    if params.init_checkpoint is None:
        return model, 0, None
    # the judge's verdict head and the halt head: a pretrained LM has neither (they keep their seeded init); a
    # release that has them (this model's earlier version) gives them when their shapes match
    heads = ("judge_head.", "halt_head.")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state, facts = load_pretrained(ctx.resolve(params.init_checkpoint), tp.architecture, expected, optional=heads)
    with torch.no_grad():
        missing, unexpected = model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
    if unexpected or any(not k.startswith(heads) for k in missing):
        raise RuntimeError(f"the pretrained state does not fit the student (missing {missing}, unexpected {unexpected})")
    ctx.log(f"student initialised from {facts['checkpoint']} ({facts['model_type']}, weights sha256 {facts['weights_sha256'][:16]})")
    return model, 0, facts


def _targets(inputs: dict[str, dict[str, Path]], job: str) -> Path | None:
    """A job's top-k targets folder; None for an HTTP teacher (no teacher job; the generate job writes no targets)."""
    folder = inputs.get(job, {}).get("targets")
    return Path(folder) if folder is not None else None


def _train_here(params: TrainParams | QatParams, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any, stage: str) -> dict:
    tp = params.training
    started = time.perf_counter()
    world = join(ctx.resources)
    try:
        grad_accum = accumulation(tp.global_batch, tp.micro_batch, world.size)
        seed_everything(tp.seed)
        train = load_split(inputs["dataset"]["data"], _targets(inputs, "teacher"), "train")
        if "generate" in inputs:  # the teacher's transcripts of data.prompts join the train split
            train = with_extra_rows(train, inputs["generate"]["data"], _targets(inputs, "generate"))
        model, quantized, init = _student(params, inputs, world.device, ctx)
        model.configure(tp.compute.attention, tp.compute.activation_checkpointing).train()
        model = wrap(model, model.layers, world, fsdp_policy(tp.compute.precision))
        optimizer = make_optimizer(model, tp)
        trainer = Trainer(tp=tp, model=model, optimizer=optimizer, train=train, world=world, grad_accum=grad_accum,
                          start_step=params.start_step, end_step=params.end_step,
                          lr_scale=params.lr_scale if isinstance(params, QatParams) else 1.0, stage=stage,
                          val=load_split(inputs["dataset"]["data"], _targets(inputs, "teacher"), "val"))
        loop = trainer.run(Path(ctx.work_dir), params.model_dump(mode="json"), ctx.provenance, ctx.force, ctx.job_id,
                           ctx.progress, ctx.log)
        state = full_state(model, world)
        world.close()
    finally:
        world.close(clean=False)  # after an error: leave without waiting for peers (a no-op once closed)
    if not world.main:
        return {}
    placement = {"world_size": world.size, "strategy": world.strategy, "grad_accum": grad_accum,
                 "global_batch": tp.global_batch, "micro_batch": tp.micro_batch}
    return _outputs(params, inputs, out, ctx, stage, world, state, quantized, loop, placement, started, train.rows, init)


def _outputs(params: TrainParams | QatParams, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any, stage: str,
             world: World, state: dict[str, torch.Tensor], quantized: int, loop: dict, placement: dict,
             started: float, train_rows: int, init: dict | None) -> dict:
    """Rank 0: validation on the whole model (fake quantization attached: what will ship), then the outputs."""
    tp = params.training
    model = Student(tp.architecture, seed=tp.seed, device=world.device).configure(tp.compute.attention)
    if isinstance(params, QatParams):
        attach_fake_quant(model, params.quantization)
    model.load_state_dict(state)
    val = load_split(inputs["dataset"]["data"], _targets(inputs, "teacher"), "val")
    # the loop validated these weights at end_step (same model, fake quantization attached in
    # QAT); only a run that resumed at end_step has no such point and validates here
    val_metrics = loop.pop("last_val") or evaluate(model, val, tp, world.device)
    if quantized:
        remove_fake_quant(model, bake=True)
    provenance = {**ctx.provenance, "init": init} if init else ctx.provenance
    save_student(out / "checkpoint", model.state_dict(), tp.architecture, params.end_step, quantized=bool(quantized),
                 provenance=provenance)
    shutil.copyfile(Path(ctx.work_dir) / "metrics.jsonl", out / "metrics.jsonl")
    shutil.copytree(run_dir(Path(ctx.work_dir), ctx.provenance, ctx.job_id), out / "tensorboard")
    last = loop.pop("last")
    report = {
        "stage": stage, "steps": [params.start_step, params.end_step], "device": str(world.device),
        "fake_quantized_modules": quantized, "final_loss": last.get("loss", {}), "final_lr": last.get("lr"),
        **loop, **val_metrics, **placement, "seconds": time.perf_counter() - started, "provenance": ctx.provenance,
        "train_rows": train_rows, "val_rows": val.rows, "init": init,
    }
    _write_report(out, report)
    metrics = dict(val_metrics)
    metrics.update({"final_loss": last.get("loss", {}).get("total"), "seconds_per_step": loop["seconds_per_step"],
                    "grad_balance_alerts": loop["grad_balance_alerts"], "steps_run": loop["steps_run"],
                    "world_size": world.size})
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return metrics

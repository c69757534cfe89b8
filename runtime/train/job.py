"""What the `train` and `qat` jobs share: load data, build the model, run the loop, write outputs."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from compiler.params import QatParams, TrainParams
from runtime.model.checkpoint import load_student, save_student
from runtime.model.fakequant import attach_fake_quant, remove_fake_quant
from runtime.model.student import Student

from .data import load_split
from .loop import Trainer, evaluate, make_optimizer, pick_device, seed_everything


def _write_report(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, sort_keys=True, indent=2) + "\n", encoding="utf-8")


def run_stage(params: TrainParams | QatParams, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any, stage: str) -> dict:
    tp = params.training
    started = time.perf_counter()
    device = pick_device(tp.device)
    seed_everything(tp.seed)
    train = load_split(inputs["dataset"]["data"], inputs["teacher"]["targets"], "train")
    val = load_split(inputs["dataset"]["data"], inputs["teacher"]["targets"], "val")
    if stage == "qat":
        model = load_student(inputs["train"]["checkpoint"], arch=tp.architecture, device=device)
    else:
        model = Student(tp.architecture, seed=tp.seed, device=device)
    model.train()
    optimizer = make_optimizer(model, tp)  # before fake quant: parameter order matches the model's own
    quantized = 0
    if isinstance(params, QatParams):
        quantized = attach_fake_quant(model, params.quantization)
    trainer = Trainer(tp=tp, model=model, optimizer=optimizer, train=train, device=device,
                      start_step=params.start_step, end_step=params.end_step,
                      lr_scale=params.lr_scale if isinstance(params, QatParams) else 1.0, stage=stage)
    loop = trainer.run(Path(ctx.work_dir), params.model_dump(mode="json"), ctx.provenance, ctx.force, ctx.job_id,
                       ctx.progress, ctx.log)
    val_metrics = evaluate(model, val, tp, device)  # with fake quant attached: what will ship
    if quantized:
        remove_fake_quant(model, bake=True)
    save_student(out / "checkpoint", model.state_dict(), tp.architecture, params.end_step, quantized=bool(quantized),
                 provenance=ctx.provenance)
    shutil.copyfile(Path(ctx.work_dir) / "metrics.jsonl", out / "metrics.jsonl")
    shutil.copytree(Path(ctx.work_dir) / "tensorboard", out / "tensorboard")
    last = loop.pop("last")
    report = {
        "stage": stage, "steps": [params.start_step, params.end_step], "device": str(device),
        "fake_quantized_modules": quantized, "final_loss": last.get("loss", {}), "final_lr": last.get("lr"),
        **loop, **val_metrics, "seconds": time.perf_counter() - started, "provenance": ctx.provenance,
        "train_rows": train.rows, "val_rows": val.rows,
    }
    _write_report(out, report)
    metrics = {k: v for k, v in val_metrics.items()}
    metrics.update({"final_loss": last.get("loss", {}).get("total"), "seconds_per_step": loop["seconds_per_step"],
                    "grad_balance_alerts": loop["grad_balance_alerts"], "steps_run": loop["steps_run"]})
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return metrics

"""The training loop shared by the KD (`train`) and QAT (`qat`) jobs.

One optimizer step = `grad_accum` micro-batches; the loss is the weighted sum of the terms in
`training.losses` (weights follow their schedules by global step); gradients are clipped to
`optimizer.grad_clip`; the learning rate follows `lr_schedule` by global step (times
`lr_scale` in QAT). Steps run from `start_step` to `end_step` of the global schedule, so KD
and QAT together follow one schedule. Every `checkpoint_every` global steps a resumable
checkpoint is written; a rerun resumes from the newest one and reproduces an uninterrupted
run exactly (stateless data order, restored optimizer and RNG states).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from compiler.params import TrainingP

from . import checkpoints, losses
from .data import Split, batch_rows, cursor, make_batch
from .metrics import GRAD_NORM_EVERY, GradBalance, MetricsLog, grad_norms
from .schedules import curriculum_seq_len, learning_rate, loss_weight


class TrainingError(RuntimeError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("training.resources.device is 'cuda' but no CUDA device is visible to this process")
    if name == "mps" and not torch.backends.mps.is_available():
        raise TrainingError("training.resources.device is 'mps' but MPS is not available on this machine")
    return torch.device(name)


def latent_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Canonical-name weights; a fake-quantized weight contributes its latent (unquantized) value."""
    out = {}
    for key, value in model.state_dict().items():
        out[key.replace(".parametrizations.weight.original", ".weight")] = value
    return out


def load_latent(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            key = f"{name}.weight"
            with torch.no_grad():
                module.parametrizations["weight"].original.copy_(state.pop(key))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if ".parametrizations.weight.original" not in m]
    if missing or unexpected:
        raise TrainingError(f"checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")


@dataclass
class Trainer:
    tp: TrainingP
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train: Split
    device: torch.device
    start_step: int
    end_step: int
    lr_scale: float = 1.0
    stage: str = "train"
    alerts: GradBalance = field(init=False)

    def __post_init__(self) -> None:
        self.alerts = GradBalance(self.tp.grad_balance["max_ratio"], self.tp.grad_balance["window"])

    def lr_at(self, step: int) -> float:
        return self.lr_scale * learning_rate(step, self.tp.total_steps, self.tp.optimizer["lr"], self.tp.lr_schedule)

    def weights_at(self, step: int) -> dict[str, float]:
        return {name: loss_weight(cfg["weight"], step) for name, cfg in self.tp.losses.items()}

    def step(self, step: int, measure: bool) -> dict[str, Any]:
        tp = self.tp
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        weights = self.weights_at(step)
        seq_len = curriculum_seq_len(step, tp.curriculum)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        norms: dict[str, float] = {}
        tokens = 0
        for micro in range(tp.grad_accum):
            rows = batch_rows(self.train.rows, tp.seed, step, micro, tp.micro_batch, tp.grad_accum)
            batch = make_batch(self.train, rows, seq_len, self.device)
            logits = self.model(batch["input_ids"], batch["attention_mask"])
            terms = losses.compute(logits, batch, tp.losses, tp.special_token_ids)
            weighted = {n: weights[n] * v for n, v in terms.items()}
            total = sum(weighted.values()) / tp.grad_accum
            if measure and micro == 0:
                norms = grad_norms(weighted, logits)
            total.backward()
            for n, v in terms.items():
                sums[n] = sums.get(n, 0.0) + float(v.detach()) / tp.grad_accum
            sums["total"] = sums.get("total", 0.0) + float(total.detach())
            tokens += int(batch["attention_mask"].sum())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), tp.optimizer["grad_clip"]))
        if not np.isfinite(grad_norm) or not np.isfinite(sums["total"]):
            raise TrainingError(f"step {step}: non-finite loss or gradient (loss {sums['total']}, grad norm {grad_norm}); "
                                "lower optimizer.lr or check the data")
        self.optimizer.step()
        row = {"step": step, "stage": self.stage, "lr": lr, "seq_len": seq_len, "tokens": tokens, "grad_norm": grad_norm,
               "loss": {n: round(v, 6) for n, v in sums.items()}, "weight": weights}
        if norms:
            row["grad_norm_by_loss"] = norms
        return row

    def run(self, work: Path, params_json: dict, provenance: dict, force: bool, job_id: str,
            progress: Callable[..., Any], log: Callable[[str], None]) -> dict[str, Any]:
        job = provenance.get("job", {})
        upstream = {u: v.get("key") for u, v in provenance.get("upstream", {}).items()}
        resumed = checkpoints.load_latest(work, job.get("key", ""), params_json, upstream, force, job_id)
        step = self.start_step
        if resumed is not None:
            load_latent(self.model, dict(resumed.model))
            self.optimizer.load_state_dict(resumed.optimizer)
            checkpoints.set_rng_state(resumed.rng)
            step = resumed.step
            log(f"resuming from the checkpoint at step {step}")
        metrics = MetricsLog(work, step)
        update = progress(f"{self.stage}: steps {self.start_step}-{self.end_step}", self.end_step - self.start_step)
        if step > self.start_step:
            update(step - self.start_step)
        start_time, steps_run, last_row = time.perf_counter(), 0, {}
        alerting = False
        self.model.train()
        while step < self.end_step:
            measure = (step - self.start_step) % GRAD_NORM_EVERY == 0 or step == self.end_step - 1
            row = self.step(step, measure)
            if "grad_norm_by_loss" in row:
                alert = self.alerts.add(step, row["grad_norm_by_loss"])
                if alert and not alerting:
                    log(f"grad_balance: '{alert['loss']}' gradient norm is {alert['ratio']}x the median of the others "
                        f"(max_ratio {alert['max_ratio']}) at step {step}")
                alerting = alert is not None
            metrics.write(row)
            step += 1
            steps_run += 1
            last_row = row
            update(1, loss=row["loss"]["total"], **{k: v for k, v in row["loss"].items() if k in ("kl", "ce_ground_truth")})
            if step % self.tp.checkpoint_every == 0 and step < self.end_step:
                metrics.flush()
                checkpoints.save(work, step, latent_state_dict(self.model), self.optimizer.state_dict(), {
                    "key": job.get("key"), "fingerprint": job.get("fingerprint"), "params": params_json, "upstream": upstream,
                    "stage": self.stage, "cursor": cursor(self.train.rows, step, self.tp.micro_batch, self.tp.grad_accum)})
        metrics.close()
        seconds = time.perf_counter() - start_time
        return {"resumed_from": resumed.step if resumed else None, "steps_run": steps_run, "seconds": seconds,
                "seconds_per_step": seconds / steps_run if steps_run else None, "last": last_row,
                "grad_balance_alerts": len(self.alerts.alerts), "grad_balance_first_alerts": self.alerts.alerts[:5]}


def make_optimizer(model: nn.Module, tp: TrainingP) -> torch.optim.Optimizer:
    """AdamW; norms and the embedding get no weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name or "embed_tokens" in name else decay).append(p)
    opt = tp.optimizer
    return torch.optim.AdamW([{"params": decay, "weight_decay": opt["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=opt["lr"], betas=tuple(opt["betas"]))


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, tp: TrainingP, device: torch.device, batch_size: int = 32) -> dict[str, float]:
    """Mean of every configured loss term on a held-out split (full length, unweighted), plus accuracy."""
    model.eval()
    totals: dict[str, float] = {}
    correct = counted = 0
    batches = 0
    max_len = int(split.tensors["attention_mask"].sum(dim=1).max())
    for start in range(0, split.rows, batch_size):
        rows = list(range(start, min(split.rows, start + batch_size)))
        batch = make_batch(split, rows, max_len, device)
        logits = model(batch["input_ids"], batch["attention_mask"])
        for n, v in losses.compute(logits, batch, tp.losses, tp.special_token_ids).items():
            totals[n] = totals.get(n, 0.0) + float(v)
        mask = batch["loss_mask"][:, 1:] > 0
        correct += int(((logits[:, :-1].argmax(-1) == batch["input_ids"][:, 1:]) & mask).sum())
        counted += int(mask.sum())
        batches += 1
    model.train()
    out = {f"val_{n}": v / batches for n, v in totals.items()}
    out["val_token_accuracy"] = correct / max(1, counted)
    return out

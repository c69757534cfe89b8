"""The training loop shared by the KD (`train`) and QAT (`qat`) jobs.

One optimizer step = `global_batch / micro_batch` micro-batches, split evenly over the ranks
(rank r runs the step's micro-batches r x grad_accum ... (r + 1) x grad_accum - 1, whatever the
world size); the loss is the weighted sum of the terms in `training.losses` (weights follow
their schedules by global step); gradients are averaged over ranks and clipped to
`optimizer.grad_clip`; the learning rate follows `lr_schedule` by global step (times
`lr_scale` in QAT). Steps run from `start_step` to `end_step` of the global schedule, so KD
and QAT together follow one schedule. Every `checkpoint_every` global steps a resumable
checkpoint is written; a rerun resumes from the newest one (at any world size) and, at the
same world size, reproduces an uninterrupted run exactly (stateless data order, restored
optimizer and RNG states).
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

from compiler.planning.params import TrainingP
from runtime.distributed.parallel import accumulating, clip_grads
from runtime.distributed.world import World

from . import checkpoints
from .data import Split, cursor, make_batch, step_micro_batches
from .head import LossHead
from .metrics import GRAD_NORM_EVERY, GradBalance, MetricsLog, run_dir
from .precision import autocast
from .schedules import curriculum_seq_len, learning_rate, loss_weight


class TrainingError(RuntimeError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Trainer:
    tp: TrainingP
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train: Split
    world: World
    grad_accum: int  # micro-batches per rank per optimizer step (world.accumulation)
    start_step: int
    end_step: int
    lr_scale: float = 1.0
    stage: str = "train"
    val: Split | None = None  # validated at every checkpoint and at end_step (the `val` of those rows)
    alerts: GradBalance = field(init=False)

    def __post_init__(self) -> None:
        self.alerts = GradBalance(self.tp.grad_balance["max_ratio"], self.tp.grad_balance["window"])

    def lr_at(self, step: int) -> float:
        return self.lr_scale * learning_rate(step, self.tp.total_steps, self.tp.optimizer["lr"], self.tp.lr_schedule)

    def weights_at(self, step: int) -> dict[str, float]:
        return {name: loss_weight(cfg["weight"], step) for name, cfg in self.tp.losses.items()}

    def step(self, step: int, measure: bool) -> dict[str, Any]:
        tp, world, accum = self.tp, self.world, self.grad_accum
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        weights = self.weights_at(step)
        seq_len = curriculum_seq_len(step, tp.curriculum)
        self.optimizer.zero_grad(set_to_none=True)
        names = list(tp.losses) + ["total"]
        sums = dict.fromkeys(names, 0.0)
        norms: dict[str, float] = {}
        tokens = positions = 0
        cp = tp.compute
        deal = step_micro_batches(self.train, tp.seed, step, tp.micro_batch, tp.global_batch // tp.micro_batch,
                                  world.size, cp.bucket_by_length)
        for micro in range(accum):
            rows = deal[world.rank * accum + micro]
            batch = make_batch(self.train, rows, seq_len, world.device)
            positions += batch["attention_mask"].numel()
            probe = weights if measure and micro == 0 and world.main else None  # the step's first micro-batch, at any world size
            head = LossHead(batch, tp.losses, tp.special_token_ids, cp.loss_chunk, probe=probe, judge=tp.judge)
            with accumulating(self.model, last=micro == accum - 1):
                with autocast(cp.precision, world.device):
                    out = self.model(batch["input_ids"], batch["attention_mask"], head=head)
                terms = out["terms"]
                total = sum(weights[n] * v for n, v in terms.items()) / accum
                total.backward()
            if probe is not None:
                norms = out["grad_norm_by_loss"]
            for n, v in terms.items():
                sums[n] += float(v.detach()) / accum
            sums["total"] += float(total.detach())
            tokens += int(batch["attention_mask"].sum())
        *reduced, tokens, positions = world.sum([sums[n] for n in names] + [tokens, positions])  # means over ranks
        sums = {n: v / world.size for n, v in zip(names, reduced)}
        grad_norm = clip_grads(self.model, tp.optimizer["grad_clip"])
        if not np.isfinite(grad_norm) or not np.isfinite(sums["total"]):
            raise TrainingError(f"step {step}: non-finite loss or gradient (loss {sums['total']}, grad norm {grad_norm}); "
                                "lower optimizer.lr or check the data")
        self.optimizer.step()
        row = {"step": step, "stage": self.stage, "lr": lr, "seq_len": seq_len, "tokens": int(tokens),
               "positions": int(positions), "grad_norm": grad_norm,
               "loss": {n: round(v, 6) for n, v in sums.items()}, "weight": weights}
        if norms:
            row["grad_norm_by_loss"] = norms
        return row

    def run(self, work: Path, params_json: dict, provenance: dict, force: bool, job_id: str,
            progress: Callable[..., Any], log: Callable[[str], None]) -> dict[str, Any]:
        """Collective: every rank runs it; rank 0 alone logs metrics and reports progress."""
        job = provenance.get("job", {})
        upstream = {u: v.get("key") for u, v in provenance.get("upstream", {}).items()}
        main = self.world.main
        resumed = checkpoints.load_latest(work, self.model, self.optimizer, self.world, job.get("key", ""), params_json,
                                          upstream, force, job_id)
        step = self.start_step
        if resumed is not None:
            step = resumed.step
            was = resumed.record.get("world_size", 1)
            log(f"resuming from the checkpoint at step {step}" + (f" (written by {was} processes, now {self.world.size})"
                                                                  if was != self.world.size else ""))
        metrics = MetricsLog(work, step, run_dir(work, provenance, job_id)) if main else None
        update = progress(f"{self.stage}: steps {self.start_step}-{self.end_step}", self.end_step - self.start_step)
        if step > self.start_step:
            update(step - self.start_step)
        start_time, steps_run, last_row, last_val = time.perf_counter(), 0, {}, None
        trained_tokens = trained_positions = 0  # real tokens and the positions they were padded to, this run
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
            done = step + 1
            if self.val is not None and (done % self.tp.checkpoint_every == 0 or done == self.end_step):
                # every rank runs it: a wrapped model's forward is collective (DDP buffers, FSDP2 gathers)
                last_val = evaluate(self.model, self.val, self.tp, self.world.device)
                row["val"] = {k.removeprefix("val_"): round(v, 6) for k, v in last_val.items()}
            if metrics:
                metrics.write(row)
            step += 1
            steps_run += 1
            last_row = row
            trained_tokens += row["tokens"]
            trained_positions += row["positions"]
            update(1, loss=row["loss"]["total"], **{k: v for k, v in row["loss"].items() if k in ("kl", "ce_ground_truth")})
            if step % self.tp.checkpoint_every == 0 and step < self.end_step:
                if metrics:
                    metrics.flush()
                checkpoints.save(work, step, self.model, self.optimizer, self.world, {
                    "key": job.get("key"), "fingerprint": job.get("fingerprint"), "params": params_json, "upstream": upstream,
                    "stage": self.stage, "cursor": cursor(self.train.rows, step, self.tp.global_batch)})
        if metrics:
            metrics.close()
        seconds = time.perf_counter() - start_time
        return {"resumed_from": resumed.step if resumed else None,
                "resumed_world_size": resumed.record.get("world_size", 1) if resumed else None,
                "steps_run": steps_run, "seconds": seconds, "tokens_trained": trained_tokens,
                "padding_fraction": round(1 - trained_tokens / trained_positions, 4) if trained_positions else None,
                "seconds_per_step": seconds / steps_run if steps_run else None, "last": last_row,
                "last_val": last_val if step == self.end_step else None,
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
    max_len = int(split.lengths.max())
    for start in range(0, split.rows, batch_size):
        rows = list(range(start, min(split.rows, start + batch_size)))
        batch = make_batch(split, rows, max_len, device)
        head = LossHead(batch, tp.losses, tp.special_token_ids, tp.compute.loss_chunk, accuracy=True, judge=tp.judge)
        with autocast(tp.compute.precision, device):
            out = model(batch["input_ids"], batch["attention_mask"], head=head)
        for n, v in out["terms"].items():
            totals[n] = totals.get(n, 0.0) + float(v)
        if "argmax" in out:  # a judge has no token targets
            mask = batch["loss_mask"][:, 1:] > 0
            correct += int(((out["argmax"] == batch["input_ids"][:, 1:]) & mask).sum())
            counted += int(mask.sum())
        batches += 1
    model.train()
    out = {f"val_{n}": v / batches for n, v in totals.items()}
    if counted:
        out["val_token_accuracy"] = correct / counted
    return out

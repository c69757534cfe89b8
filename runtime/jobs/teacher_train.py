"""Training the `teacher` job's Llama (`teacher.kind: train`), in one process or as one of W ranks.

Each step takes the next `micro_batch` rows of a seeded stream of permutations (the same on
every rank); rank r of W trains on rows r x b .. (r + 1) x b - 1 of them (b = micro_batch / W),
all cropped to the step's longest row, and the loss is normalised by the step's target tokens
over all ranks. So W ranks compute the gradient one process would, up to float order, and the
teacher's fingerprint does not depend on W. AdamW with the fixed choices below, linear warmup
then cosine decay, next-token cross-entropy on the target positions (`loss_mask` shifted by one).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from runtime.distributed.parallel import clip_grads, full_state, unwrap, wrap
from runtime.distributed.world import DistributedError, World

# Fixed optimizer choices of the "train" teacher (the spec sets lr, steps and batch only).
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1  # on matrices only; norm gains are not decayed
GRAD_CLIP = 1.0
WARMUP_FRACTION = 0.05  # of the steps, at least one step
MIN_LR_FRACTION = 0.1  # cosine decays to this fraction of lr


def rows_per_rank(micro_batch: int, world_size: int) -> int:
    if micro_batch % world_size:
        sizes = [w for w in range(1, micro_batch + 1) if micro_batch % w == 0]
        raise DistributedError(f"teacher.micro_batch {micro_batch} (rows per teacher step) does not split into "
                               f"{world_size} processes: launch a world size that divides it ({', '.join(map(str, sizes))}) "
                               "or change teacher.micro_batch")
    return micro_batch // world_size


def lr_at(step: int, steps: int, lr: float) -> float:
    warmup = max(1, round(WARMUP_FRACTION * steps))
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def masked_ce(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed CE, correct next-token predictions, counted positions) over target positions."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    targets, weights = ids[:, 1:], mask[:, 1:].float()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    correct = (logits.argmax(-1) == targets).float()
    return (ce * weights.reshape(-1)).sum(), (correct * weights).sum(), weights.sum()


def train(model, params, arrays: dict[str, np.ndarray], lengths: np.ndarray, world: World, ctx):
    """Collective. (per-step losses, the trained model on rank 0 / None elsewhere); `model` is unwrapped."""
    rows = len(lengths)
    own = rows_per_rank(params.micro_batch, world.size)
    model.train()
    wrapped = wrap(model, model.model.layers, world)
    decay = [p for p in wrapped.parameters() if p.ndim >= 2]
    no_decay = [p for p in wrapped.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=params.lr, betas=BETAS)
    gen = torch.Generator().manual_seed(params.seed)
    order: list[int] = []
    ids_all, mask_all = torch.from_numpy(arrays["input_ids"]), torch.from_numpy(arrays["loss_mask"])
    update = ctx.progress("teacher: training", total=params.steps)
    losses = []
    for step in range(params.steps):
        while len(order) < params.micro_batch:
            order += torch.randperm(rows, generator=gen).tolist()
        batch, order = order[:params.micro_batch], order[params.micro_batch:]
        crop = min(params.seq_len, int(lengths[batch].max()))
        mine = batch[world.rank * own:(world.rank + 1) * own]
        ids = ids_all[mine, :crop].to(world.device, torch.long)
        mask = mask_all[mine, :crop].to(world.device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, params.steps, params.lr)
        ce, _, count = masked_ce(wrapped, ids, mask)
        if world.size == 1:
            loss = ce / count.clamp_min(1)
            logged = float(loss.detach())
        else:  # DDP / FSDP2 average gradients over ranks: scale so the sum is over the step's target tokens
            ce_all, count_all = world.sum([float(ce.detach()), float(count)])
            loss = ce * (world.size / max(count_all, 1.0))
            logged = ce_all / max(count_all, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grads(wrapped, GRAD_CLIP)
        opt.step()
        losses.append(logged)
        update(1, loss=logged)
    state = full_state(wrapped, world) if world.size > 1 else None
    if not world.main:
        return losses, None
    if state is not None:  # rank 0: the whole model, out of its DDP / FSDP2 wrapper
        trained = type(model)(model.config).to(world.device, torch.float32)
        trained.load_state_dict(state)
        return losses, trained.eval()
    return losses, unwrap(wrapped).eval()

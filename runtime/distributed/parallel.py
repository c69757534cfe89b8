"""How a model is shared by the ranks: DDP (every rank holds it whole) or FSDP2 (sharded).

`ddp`: `DistributedDataParallel`; gradients are averaged over ranks in the last micro-batch's
backward (`accumulating` skips the all-reduce for the others). `fsdp2`: `fully_shard` on each
decoder layer and on the root, so parameters, gradients and optimizer state are split across
ranks and a layer is gathered only while it runs. One process (`none`): the model as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .world import World


def wrap(model: nn.Module, layers: Iterable[nn.Module], world: World, mp_policy: Any | None = None) -> nn.Module:
    """`mp_policy`: FSDP2's `MixedPrecisionPolicy` (bf16 gathers; runtime/train/precision.py), fsdp2 only."""
    if world.strategy == "ddp":
        ids = [world.device.index] if world.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if world.strategy == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        kw = {"mp_policy": mp_policy} if mp_policy is not None else {}
        for layer in layers:
            fully_shard(layer, **kw)
        fully_shard(model, **kw)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def accumulating(model: nn.Module, last: bool) -> Iterator[None]:
    """Gradients of a micro-batch that is not the step's last stay local (no all-reduce yet)."""
    if isinstance(model, DistributedDataParallel) and not last:
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(last)
    yield


def clip_grads(model: nn.Module, max_norm: float) -> float:
    """Clip to the global norm over every rank's gradients; the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return float(norm)


def full_state(model: nn.Module, world: World) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0 (CPU tensors), empty elsewhere; collective under FSDP2."""
    if world.strategy == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not world.main:
        return {}
    return {k: v.detach().to("cpu") for k, v in unwrap(model).state_dict().items()}

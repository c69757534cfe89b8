"""`training.compute.precision` as torch sees it: the autocast context of the training forward and the
FSDP2 mixed-precision policy.

fp32: no autocast. bf16: `torch.autocast(bfloat16)` around the forward and the loss (matmuls and
attention in bf16; parameters, gradients and AdamW state stay fp32: the parameters are the master
weights), and under FSDP2 `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`: layers
are gathered in bf16 and gradients reduced in fp32. Norm statistics, RoPE angles and every loss
term are computed in fp32 whatever the precision (runtime/model/student.py, runtime/train/losses.py).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}")


def fsdp_policy(precision: str) -> Any | None:
    """The FSDP2 mixed-precision policy for `precision` (None: fp32 throughout)."""
    if precision == "fp32":
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)

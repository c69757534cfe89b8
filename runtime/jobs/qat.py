"""The `qat` job: continues the KD checkpoint with fake quantization per the resolved recipe.

Every planned module's weight is fake-quantized exactly as the converter will quantize it
(dtype, granularity, block size; straight-through gradients), from ``start_step`` (the
``start_fraction`` of training.steps) to the end, at ``lr_scale`` x the global schedule's
learning rate. The output checkpoint holds the quantize-dequantized weights (what ships);
export and eval consume it. Inputs and outputs otherwise as the `train` job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compiler.planning.params import QatParams
from runtime.train.job import run_stage


def run(params: QatParams, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any) -> dict:
    return run_stage(params, inputs, out, ctx, stage="qat")

"""The `train` job: knowledge distillation from the teacher's top-k targets (steps start..end).

Inputs: ``inputs["dataset"]["data"]`` and ``inputs["teacher"]["targets"]``. Outputs:
``out/checkpoint`` (runtime.model.checkpoint format), ``out/metrics.jsonl`` (one row per step),
``out/tensorboard`` (event files) and ``out/report.json`` (final and validation losses, speed,
grad-balance alerts, resume point, provenance). Resumable: see runtime.train.checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compiler.planning.params import TrainParams
from runtime.train.job import run_stage


def run(params: TrainParams, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any) -> dict:
    return run_stage(params, inputs, out, ctx, stage="train")

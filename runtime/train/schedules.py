"""Pure schedules: learning rate, loss weights and the sequence-length curriculum, by global step."""

from __future__ import annotations

import math
from typing import Any


def learning_rate(step: int, total_steps: int, peak: float, schedule: dict[str, Any]) -> float:
    """Linear warmup to `peak` over warmup_steps, then cosine/linear decay to min_lr at total_steps."""
    warmup, min_lr, decay = schedule["warmup_steps"], schedule["min_lr"], schedule["decay"]
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    if decay == "constant":
        return peak
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if decay == "linear":
        return min_lr + (peak - min_lr) * (1.0 - progress)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def loss_weight(weight: float | dict[str, Any], step: int) -> float:
    """A constant, `{ramp: {start, end, steps}}` (linear, then constant) or `{step: {before, after, at_step}}`."""
    if isinstance(weight, (int, float)):
        return float(weight)
    if "ramp" in weight:
        r = weight["ramp"]
        return float(r["end"]) if step >= r["steps"] else r["start"] + (r["end"] - r["start"]) * step / r["steps"]
    s = weight["step"]
    return float(s["after"] if step >= s["at_step"] else s["before"])


def curriculum_seq_len(step: int, curriculum: list[dict[str, int]]) -> int:
    """The sequence length of the first stage whose until_step (exclusive) is past `step`."""
    for stage in curriculum:
        if step < stage["until_step"]:
            return stage["seq_len"]
    return curriculum[-1]["seq_len"]

"""The halt head's metrics in the eval job: teacher-forced over the eval split (docs/roles.md#the-halt-head).

Each eval row runs once through `Student.halt_outputs` (the full forward with the halt head; rows of the same
length batched, no padding); at every target position t (`loss_mask` of token t + 1) the head's probability is
compared with whether token t + 1 ends the turn (eos or the tool-call end, `runtime/train/halt_loss.py`):

- halt_auroc: the area under the ROC curve over all those positions (ties count half: the Mann-Whitney
  statistic with average ranks); n = positions;
- early_halt_rate: rows with a position whose next token does not end the turn but whose probability reaches
  the spec's halt.threshold, where a decoder (a drafter) would stop too early; n = rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.data.shards import RowSource
from runtime.train.halt_loss import stop_ids

from .eval_batches import length_batches


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (None without both classes)."""
    pos, neg = int(labels.sum()), int((1 - labels).sum())
    if not pos or not neg:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0  # 1-based average rank of each run of ties
    ranks[order] = np.repeat(average, counts)
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def score(logits: list[np.ndarray], labels: list[np.ndarray], threshold: float) -> dict[str, dict[str, Any]]:
    """The metrics from each row's halt logits and labels at its target positions. AUROC ranks the logits (a
    probability saturates at 1.0 in float32 and would turn a confident head's ranking into ties)."""
    p = np.concatenate(logits) if logits else np.zeros(0)
    y = np.concatenate(labels) if labels else np.zeros(0)
    cut = float(np.log(threshold / (1.0 - threshold)))  # sigmoid(logit) >= threshold
    early = sum(1 for lo, lab in zip(logits, labels) if bool(((lo >= cut) & (lab == 0)).any()))
    return {"halt_auroc": {"value": auroc(p, y), "n": int(p.size)},
            "early_halt_rate": {"value": early / len(logits) if logits else None, "n": len(logits)}}


def measure(model, data_dir: Path, special: dict[str, int], threshold: float, device: torch.device,
            budget_mb: int) -> dict[str, dict[str, Any]]:
    source = RowSource(Path(data_dir), "eval", rebuild="the dataset job")
    stops = np.array(stop_ids(special))
    probs: list[np.ndarray] = [np.zeros(0)] * source.rows
    labels: list[np.ndarray] = [np.zeros(0)] * source.rows
    with torch.no_grad():
        for n, part in length_batches(source, model.arch, budget_mb):
            ids = source.take("input_ids", part, n).long()
            mask = source.take("loss_mask", part, n).numpy()[:, 1:] > 0
            halt = model.halt_head(model.final_states(ids.to(device)))
            p = halt[:, :-1, 0].double().cpu().numpy()
            nxt = ids[:, 1:].numpy()
            for j, r in enumerate(part):
                probs[r] = p[j][mask[j]]
                labels[r] = np.isin(nxt[j], stops)[mask[j]].astype(np.float64)
    return score(probs, labels, threshold)

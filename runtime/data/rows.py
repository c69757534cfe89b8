"""Training rows on disk: the layout the dataset and generate jobs write and the trainer reads.

Shards `{split}-NNNNN.safetensors` and their index `{split}.index.json` (runtime/data/shards.py):
int32 `[rows, max_seq_len]` tensors `input_ids` (padded with the pad id), `attention_mask` and the
four masks of `runtime.data.chat.MASKS` (0 on padding), with one metadata key, `modelspec`
(safetensors keeps metadata in a hash map, so several keys come out in a different order from run
to run and the file would not be byte-identical). `{split}.jsonl`: one metadata object per row,
same order. Read them with `shards.RowSource` (memory-mapped, a batch at a time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .chat import MASKS
from .shards import write_shards

TENSORS = ("input_ids", "attention_mask") + MASKS


def write_rows(folder: Path, split: str, rows: list[dict[str, list[int]]], meta: list[dict[str, Any]], max_seq_len: int,
               info: dict[str, Any], extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Write `rows` (each `input_ids` and the masks, unpadded) and `meta`; returns the padded arrays.
    `info` is the safetensors metadata (it must hold `pad_id`). `extra`: more per-row tensors `[rows, ...]`
    (a judge's `judge` vectors, runtime/data/judge.py)."""
    arrays = {name: np.zeros((len(rows), max_seq_len), dtype=np.int32) for name in TENSORS}
    arrays["input_ids"].fill(info["pad_id"])
    for r, row in enumerate(rows):
        k = len(row["input_ids"])
        arrays["input_ids"][r, :k] = row["input_ids"]
        arrays["attention_mask"][r, :k] = 1
        for m in MASKS:
            arrays[m][r, :k] = row[m]
    arrays.update(extra or {})
    write_shards(folder, split, arrays, arrays["attention_mask"].sum(axis=1),
                 {"modelspec": json.dumps(info, sort_keys=True, separators=(",", ":"))})
    with open(folder / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for m in meta:
            fh.write(json.dumps(m, sort_keys=True, separators=(",", ":")) + "\n")
    return arrays

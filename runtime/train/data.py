"""Training batches: dataset tensors plus teacher top-k targets, in a stateless order.

The order is a pure function of (seed, global step): epoch `e` visits the rows in
`randperm(rows, seed=seed * 1_000_003 + e)`, and step `s` takes the next `global_batch`
positions of that endless stream, cut into micro-batches of `micro_batch` that the ranks share
out in order. It does not depend on the world size, so N ranks see the samples one process
would, and resuming at step `s` (with any world size) needs no sampler state (the "data
cursor" recorded in checkpoints is derived, for people).

A batch is cropped to min(curriculum seq_len, the longest real row in it); rows longer than
the stage's seq_len are cut at seq_len (their remaining targets are simply not trained on in
that stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

TOKEN_TENSORS = ("input_ids", "attention_mask", "loss_mask", "tool_name_mask", "json_args_mask", "integration_mask")


class TrainDataError(RuntimeError):
    pass


@dataclass
class Split:
    tensors: dict[str, Tensor]  # TOKEN_TENSORS int64 [rows, L] and topk_ids/topk_logits [rows, T, k]

    @property
    def rows(self) -> int:
        return self.tensors["input_ids"].shape[0]


def load_split(data_dir: Path, targets_dir: Path | None, split: str) -> Split:
    """Dataset rows and the teacher's top-k targets for them (row i of both is the same sample). Without a
    targets folder (an HTTP teacher: sequence-level KD) the targets are empty (k = 0); the compiler refuses
    the loss terms that read them (kl, ce_teacher, length_kd)."""
    data = load_file(str(data_dir / f"{split}.safetensors"))
    if targets_dir is None:
        shape = (*data["input_ids"].shape, 0)
        targets = {"topk_ids": torch.zeros(shape, dtype=torch.int32), "topk_logits": torch.zeros(shape)}
    else:
        targets = load_file(str(targets_dir / f"{split}.safetensors"))
    wanted = ("topk_ids", "topk_logprobs", "topk_log_tail", "kd_mask") if "kd_mask" in targets else ("topk_ids", "topk_logits")
    missing = [n for n in TOKEN_TENSORS if n not in data] + [n for n in wanted if n not in targets]
    if missing:
        raise TrainDataError(f"{data_dir} / {targets_dir}: missing tensors {missing}; rebuild the dataset and teacher jobs")
    if "kd_mask" in targets:  # sparse targets with the tail (an HTTP teacher's logprobs, runtime/jobs/generate.py)
        rows = data["input_ids"].shape[0]
        if targets["topk_ids"].shape[0] != rows:
            raise TrainDataError(f"{targets_dir}: {targets['topk_ids'].shape[0]} target rows for {rows} rows; rebuild the generate job")
        tensors = {n: data[n].long() for n in TOKEN_TENSORS}
        tensors |= {"topk_ids": targets["topk_ids"].long(), "topk_logprobs": targets["topk_logprobs"].float(),
                    "topk_log_tail": targets["topk_log_tail"].float(), "kd_mask": targets["kd_mask"].long()}
        return Split(tensors)
    rows = data["input_ids"].shape[0]
    if targets["topk_ids"].shape[0] != rows:
        raise TrainDataError(f"teacher targets have {targets['topk_ids'].shape[0]} rows for split '{split}', the dataset "
                             f"has {rows}: the teacher job ran on different data")
    tensors = {n: data[n].long() for n in TOKEN_TENSORS}
    tensors["topk_ids"] = targets["topk_ids"].long()
    tensors["topk_logits"] = targets["topk_logits"].float()
    if rows == 0:
        raise TrainDataError(f"split '{split}' is empty")
    return Split(tensors)


def with_extra_rows(split: Split, data_dir: Path, targets_dir: Path | None) -> Split:
    """`split` followed by the rows of another source (the generate job's transcripts: same row layout,
    same targets layout); the teacher's T is padded to the longer of the two."""
    extra = load_split(data_dir, targets_dir, "train").tensors
    base = split.tensors
    if "kd_mask" in extra and "kd_mask" not in base:  # rows without an HTTP teacher's targets: none of theirs count
        if base["topk_ids"].shape[2] != 0:
            raise TrainDataError("a dense teacher's targets cannot join an HTTP teacher's sparse ones")
        rows, length = base["input_ids"].shape
        k = extra["topk_ids"].shape[2]
        base = {n: base[n] for n in TOKEN_TENSORS} | {
            "topk_ids": torch.full((rows, length, k), -1, dtype=torch.long), "topk_logprobs": torch.zeros((rows, length, k)),
            "topk_log_tail": torch.zeros((rows, length)), "kd_mask": torch.zeros((rows, length), dtype=torch.long)}
    if extra["input_ids"].shape[1] != base["input_ids"].shape[1]:
        raise TrainDataError(f"{data_dir}: rows of {extra['input_ids'].shape[1]} tokens cannot join rows of "
                             f"{base['input_ids'].shape[1]}; rebuild the generate job with the dataset's max_seq_len")
    if extra["topk_ids"].shape[2] != base["topk_ids"].shape[2]:
        raise TrainDataError(f"{targets_dir}: top-{extra['topk_ids'].shape[2]} targets cannot join top-"
                             f"{base['topk_ids'].shape[2]}; rebuild the generate job")
    T = max(extra["topk_ids"].shape[1], base["topk_ids"].shape[1])
    out = {}
    for name, value in base.items():
        other = extra[name]
        if name in ("topk_ids", "topk_logits", "topk_logprobs"):
            fill = -1 if name == "topk_ids" and "kd_mask" in base else 0
            value, other = (torch.nn.functional.pad(v, (0, 0, 0, T - v.shape[1]), value=fill) for v in (value, other))
        out[name] = torch.cat([value, other])
    return Split(out)


def epoch_order(rows: int, seed: int, epoch: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(rows, generator=g)


def batch_rows(rows: int, seed: int, step: int, micro: int, micro_batch: int, micros_per_step: int) -> list[int]:
    """Row indices of micro-batch `micro` (0 .. micros_per_step - 1, counted over all ranks) of step `step`."""
    start = (step * micros_per_step + micro) * micro_batch
    out, cache = [], {}
    for pos in range(start, start + micro_batch):
        epoch, offset = divmod(pos, rows)
        if epoch not in cache:
            cache[epoch] = epoch_order(rows, seed, epoch)
        out.append(int(cache[epoch][offset]))
    return out


def cursor(rows: int, step: int, global_batch: int) -> dict[str, int]:
    epoch, offset = divmod(step * global_batch, rows)
    return {"epoch": epoch, "offset": offset}


def make_batch(split: Split, rows: list[int], seq_len: int, device: torch.device) -> dict[str, Tensor]:
    """The rows cropped to min(seq_len, longest real row); teacher targets cropped alike."""
    idx = torch.tensor(rows)
    lengths = split.tensors["attention_mask"][idx].sum(dim=1)
    length = int(min(seq_len, int(lengths.max())))
    batch = {n: split.tensors[n][idx, :length] for n in TOKEN_TENSORS}
    t = split.tensors["topk_ids"].shape[1]
    for n in ("topk_log_tail", "kd_mask"):  # sparse targets: rows are as long as the dataset's
        if n in split.tensors:
            batch[n] = split.tensors[n][idx, :length]
    for n in ("topk_ids", "topk_logits", "topk_logprobs"):
        if n not in split.tensors:
            continue
        cut = split.tensors[n][idx, :min(length, t)]
        if cut.shape[1] < length:  # rows are never longer than the teacher's T; pad defensively
            pad = torch.zeros((cut.shape[0], length - cut.shape[1], cut.shape[2]), dtype=cut.dtype)
            cut = torch.cat([cut, pad], dim=1)
        batch[n] = cut
    return {n: v.to(device) for n, v in batch.items()}

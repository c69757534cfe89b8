"""Training batches: dataset tensors plus teacher top-k targets, in a stateless order.

The order is a pure function of (seed, global step): epoch `e` visits the rows in
`randperm(rows, seed=seed * 1_000_003 + e)`, and step `s` takes the next `global_batch`
positions of that endless stream, cut into micro-batches of `micro_batch` that the ranks share
out in order. It does not depend on the world size, so N ranks see the samples one process
would, and resuming at step `s` (with any world size) needs no sampler state (the "data
cursor" recorded in checkpoints is derived, for people).

Length bucketing (`training.compute.bucket_by_length`, on by default): a step's rows are sorted
by length and cut into its micro-batches (`step_micro_batches`), so each micro-batch holds rows of
similar length; the step trains exactly the rows it would unbucketed, and the deal does not depend
on the world size either (the same micro-batches, shared out to other ranks).

A batch is cropped to min(curriculum seq_len, the longest real row in it); rows longer than
the stage's seq_len are cut at seq_len (their remaining targets are simply not trained on in
that stage). The train report states the fraction of trained positions that were padding.

Rows and targets are memory-mapped shards (runtime/data/shards.py): a batch reads only its rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from runtime.data.shards import RowSource, ShardError

TOKEN_TENSORS = ("input_ids", "attention_mask", "loss_mask", "tool_name_mask", "json_args_mask", "integration_mask")
DENSE = ("topk_ids", "topk_logits")
SPARSE = ("topk_ids", "topk_logprobs", "topk_log_tail", "kd_mask")
JUDGE = "judge"  # a judge's rows: one vector per row (runtime/data/judge.py), never cropped


class TrainDataError(RuntimeError):
    pass


@dataclass
class Part:
    """Rows from one source: token rows and the teacher targets for them (row i of both is the same sample).
    `kind`: "none" (no targets: an HTTP teacher without logit KD, k = 0), "dense" (top-k logits [rows, T, k])
    or "sparse" (an HTTP teacher's top-k logprobs with the tail [rows, L, k])."""

    rows: RowSource | None = None
    targets: RowSource | None = None
    kind: str = "none"
    tensors: dict[str, Tensor] | None = None  # in memory instead of sources (benchmarks, tests)

    @property
    def count(self) -> int:
        return self.tensors["input_ids"].shape[0] if self.tensors is not None else self.rows.rows  # type: ignore[union-attr]

    def lengths(self) -> np.ndarray:
        if self.tensors is not None:
            return self.tensors["attention_mask"].sum(dim=1).numpy()
        return self.rows.lengths()  # type: ignore[union-attr]

    def k(self) -> int:
        if self.tensors is not None:
            return self.tensors["topk_ids"].shape[2] if "topk_ids" in self.tensors else 0
        return self.targets.shape("topk_ids")[1] if self.targets is not None else 0

    def width(self) -> int:
        """Positions per row (max_seq_len)."""
        return self.tensors["input_ids"].shape[1] if self.tensors is not None else self.rows.shape("input_ids")[0]  # type: ignore[union-attr]

    def read(self, name: str, rows: list[int], columns: int) -> Tensor | None:
        """Rows of one tensor cut to `columns` positions (None: this part has no such tensor)."""
        if self.tensors is not None:
            t = self.tensors.get(name)
            return None if t is None else t[torch.tensor(rows)] if name == JUDGE else t[torch.tensor(rows), :columns]
        src = self.rows if name in TOKEN_TENSORS or name == JUDGE else self.targets
        if src is None or name not in src.names:
            return None
        return src.take(name, rows, None if name == JUDGE else columns)


@dataclass
class Split:
    """The rows of one split, memory-mapped: only a batch's rows are ever read (`make_batch`)."""

    parts: list[Part] = field(default_factory=list)

    def __init__(self, tensors: dict[str, Tensor] | None = None, parts: list[Part] | None = None) -> None:
        """`Split(tensors)`: rows already in memory (TOKEN_TENSORS, topk_ids and topk_logits or the sparse set)."""
        if tensors is not None:
            kind = "sparse" if "kd_mask" in tensors else ("dense" if tensors["topk_ids"].shape[2] else "none")
            parts = [Part(tensors=tensors, kind=kind)]
        self.parts = parts or []
        self._offsets = np.cumsum([0] + [p.count for p in self.parts])
        self._lengths = np.concatenate([p.lengths() for p in self.parts]) if self.parts else np.zeros(0, dtype=np.int64)

    @property
    def rows(self) -> int:
        return int(self._offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        """Every row's real length (the index's; no row is read)."""
        return self._lengths

    @property
    def sparse(self) -> bool:
        return any(p.kind == "sparse" for p in self.parts)

    @property
    def judge(self) -> bool:
        """A judge's rows: each carries its verdict vector."""
        return any((p.tensors is not None and JUDGE in p.tensors) or (p.rows is not None and JUDGE in p.rows.names)
                   for p in self.parts)

    @property
    def k(self) -> int:
        return max((p.k() for p in self.parts), default=0)

    def locate(self, rows: list[int]) -> dict[int, list[tuple[int, int]]]:
        """part -> [(row within the part, position in `rows`)]."""
        out: dict[int, list[tuple[int, int]]] = {}
        for i, r in enumerate(rows):
            p = int(np.searchsorted(self._offsets, r, side="right")) - 1
            out.setdefault(p, []).append((r - int(self._offsets[p]), i))
        return out


def _sources(data_dir: Path, targets_dir: Path | None, split: str) -> Part:
    try:
        rows = RowSource(data_dir, split, rebuild="the dataset (or generate) job")
        targets = RowSource(targets_dir, split, rebuild="the teacher (or generate) job") if targets_dir is not None else None
    except ShardError as exc:
        raise TrainDataError(str(exc)) from None
    missing = [n for n in TOKEN_TENSORS if n not in rows.names]
    kind = "none"
    if targets is not None:
        kind = "sparse" if "kd_mask" in targets.names else "dense"
        missing += [n for n in (SPARSE if kind == "sparse" else DENSE) if n not in targets.names]
    if missing:
        raise TrainDataError(f"{data_dir} / {targets_dir}: missing tensors {missing}; rebuild the dataset and teacher jobs")
    if targets is not None and targets.rows != rows.rows:
        raise TrainDataError(f"teacher targets have {targets.rows} rows for split '{split}', the dataset has {rows.rows}: "
                             "the teacher job ran on different data")
    return Part(rows=rows, targets=targets, kind=kind)


def load_split(data_dir: Path, targets_dir: Path | None, split: str) -> Split:
    """Dataset rows and the teacher's top-k targets for them (row i of both is the same sample), memory-mapped.
    Without a targets folder (an HTTP teacher: sequence-level KD) the targets are empty (k = 0); the compiler
    refuses the loss terms that read them (kl, ce_teacher, length_kd)."""
    part = _sources(data_dir, targets_dir, split)
    if part.count == 0:
        raise TrainDataError(f"split '{split}' is empty")
    return Split(parts=[part])


def with_extra_rows(split: Split, data_dir: Path, targets_dir: Path | None) -> Split:
    """`split` followed by the rows of another source (the generate job's transcripts: same row layout,
    same targets layout); batches pad the teacher's T to the longer of the two."""
    extra = _sources(data_dir, targets_dir, "train")
    if extra.kind == "sparse" and not split.sparse:  # rows without an HTTP teacher's targets: none of theirs count
        if split.k != 0:
            raise TrainDataError("a dense teacher's targets cannot join an HTTP teacher's sparse ones")
    elif extra.k() != split.k:
        raise TrainDataError(f"{targets_dir}: top-{extra.k()} targets cannot join top-{split.k}; rebuild the generate job")
    if extra.width() != split.parts[0].width():
        raise TrainDataError(f"{data_dir}: rows of {extra.width()} tokens cannot join rows of {split.parts[0].width()}; "
                             "rebuild the generate job with the dataset's max_seq_len")
    return Split(parts=[*split.parts, extra])


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


def step_micro_batches(split: Split, seed: int, step: int, micro_batch: int, micros_per_step: int, world: int,
                       bucket: bool) -> list[list[int]]:
    """Row indices of every micro-batch of step `step`, indexed by rank x accumulation + micro. Unbucketed: the
    stream's order (`batch_rows`). Bucketed: the same rows sorted by length (then row) and cut into micro-batches,
    dealt to the ranks in a snake order (rank 0 gets the shortest and, next round, the longest of its pair) so the
    ranks' work stays balanced; every rank computes the same deal from the index's lengths."""
    groups = [batch_rows(split.rows, seed, step, m, micro_batch, micros_per_step) for m in range(micros_per_step)]
    if not bucket or micros_per_step == 1:
        return groups
    flat = sorted((r for g in groups for r in g), key=lambda r: (int(split.lengths[r]), r))
    chunks = [flat[i * micro_batch:(i + 1) * micro_batch] for i in range(micros_per_step)]
    accum = micros_per_step // world
    out: list[list[int]] = [[] for _ in range(micros_per_step)]
    for i in range(accum):
        for r in range(world):
            chunk = i * world + (r if i % 2 == 0 else world - 1 - r)
            out[r * accum + i] = chunks[chunk]
    return out


def cursor(rows: int, step: int, global_batch: int) -> dict[str, int]:
    epoch, offset = divmod(step * global_batch, rows)
    return {"epoch": epoch, "offset": offset}


def make_batch(split: Split, rows: list[int], seq_len: int, device: torch.device) -> dict[str, Tensor]:
    """The rows cropped to min(seq_len, longest real row); teacher targets cropped (or zero-padded) alike.
    Only these rows are read from the shards."""
    length = int(min(seq_len, int(split.lengths[rows].max())))
    located = split.locate(rows)
    order = torch.tensor([i for part in sorted(located) for _, i in located[part]])
    names = TOKEN_TENSORS + (SPARSE if split.sparse else DENSE) + ((JUDGE,) if split.judge else ())
    k = split.k
    batch: dict[str, Tensor] = {}
    for name in names:
        pieces = []
        for p in sorted(located):
            part, local = split.parts[p], [r for r, _ in located[p]]
            t = part.read(name, local, length)
            if t is None and name == JUDGE:
                raise TrainDataError("judge rows and rows without verdict vectors cannot share a split")
            if t is None:  # targets this part lacks: none of its positions count
                t = _absent(name, len(local), length, k, sparse=split.sparse)
            elif name in ("topk_ids", "topk_logits", "topk_logprobs") and t.shape[1] < length:
                fill = -1 if name == "topk_ids" and split.sparse else 0  # rows are never longer than the teacher's T
                t = torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1]), value=fill)
            pieces.append(t.long() if name in TOKEN_TENSORS or name in ("topk_ids", "kd_mask") else t.float())
        whole = torch.cat(pieces)
        batch[name] = torch.empty_like(whole).index_copy_(0, order, whole)  # back to the order of `rows`
    return {n: v.to(device) for n, v in batch.items()}


def _absent(name: str, rows: int, length: int, k: int, sparse: bool) -> Tensor:
    if name == "topk_ids":
        return torch.full((rows, length, k), -1 if sparse else 0, dtype=torch.long)
    if name in ("topk_logits", "topk_logprobs"):
        return torch.zeros((rows, length, k))
    return torch.zeros((rows, length), dtype=torch.long if name == "kd_mask" else torch.float32)

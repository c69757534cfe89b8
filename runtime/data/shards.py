"""Row tensors in shards, read memory-mapped a few rows at a time.

A split of rows (the dataset and generate jobs' token rows, the teacher jobs' targets) is written
as shards of at most `SHARD_ROWS` rows, `{split}-00000.safetensors`, ..., and an index
`{split}.index.json`: every shard's file name, row count, byte size and sha256, and the rows'
real lengths. A reader (`RowSource`) maps the shards (`safetensors.safe_open`: the file is
memory-mapped, nothing is read until asked) and reads only the rows a batch needs, so a rank's
memory does not grow with the dataset: it holds the index and one batch.

A shard that is missing, of another size than the index says, or whose header does not parse is
refused when the source opens, before any row is read (never trained on), naming the shard and
the job to rebuild. Content hashes are checked by the store when it decides a job is done
(runtime/store.py); `RowSource(verify=True)` rechecks them here (the benchmark does not, tests do).

A legacy single `{split}.safetensors` (no index) reads as one shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

SHARD_ROWS = 4096
FORMAT = "modelspec-rows/1"


class ShardError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Writes rows a chunk at a time: every `shard_rows` rows become one shard; `close()` writes the index.
    A writer holds at most one shard of rows, so a split of any size is written in bounded memory."""

    def __init__(self, folder: Path, split: str, metadata: dict[str, str], shard_rows: int = SHARD_ROWS,
                 keep_lengths: bool = True) -> None:
        self.folder, self.split, self.metadata, self.shard_rows = Path(folder), split, metadata, shard_rows
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict[str, Any]] = []
        self.lengths: list[int] | None = [] if keep_lengths else None
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        self.rows = 0

    def add(self, arrays: dict[str, np.ndarray], lengths: np.ndarray | None = None) -> None:
        n = len(next(iter(arrays.values())))
        if self.lengths is not None:
            if lengths is None:
                raise ValueError("this writer keeps row lengths: pass them")
            self.lengths.extend(int(x) for x in lengths)
        start = 0
        while start < n:
            take = min(n - start, self.shard_rows - self._pending_rows)
            self._pending.append({k: v[start:start + take] for k, v in arrays.items()})
            self._pending_rows += take
            start += take
            if self._pending_rows == self.shard_rows:
                self._flush()
        self.rows += n
        if n == 0 and not self._pending:
            self._pending.append({k: v[:0] for k, v in arrays.items()})

    def _flush(self) -> None:
        from safetensors.numpy import save_file

        if not self._pending:
            return
        part = {k: np.ascontiguousarray(np.concatenate([p[k] for p in self._pending])) for k in self._pending[0]}
        name = f"{self.split}-{len(self.shards):05d}.safetensors"
        save_file(part, str(self.folder / name), metadata=self.metadata)
        self.shards.append({"file": name, "rows": self._pending_rows, "bytes": (self.folder / name).stat().st_size,
                            "sha256": _sha256(self.folder / name)})
        self._pending, self._pending_rows = [], 0

    def close(self) -> dict[str, Any]:
        if self._pending_rows or (self._pending and not self.shards):
            self._flush()
        index: dict[str, Any] = {"format": FORMAT, "rows": self.rows, "shards": self.shards}
        if self.lengths is not None:
            index["lengths"] = self.lengths
        (self.folder / f"{self.split}.index.json").write_text(json.dumps(index, separators=(",", ":")) + "\n",
                                                              encoding="utf-8")
        return index


def write_shards(folder: Path, split: str, arrays: dict[str, np.ndarray], lengths: np.ndarray | None,
                 metadata: dict[str, str], shard_rows: int = SHARD_ROWS) -> dict[str, Any]:
    """Write `arrays` (each `[rows, ...]`) as shards of `shard_rows` rows plus the index; returns the index.
    `lengths`: each row's real length, kept in the index (token rows; None for targets)."""
    writer = ShardWriter(folder, split, metadata, shard_rows, keep_lengths=lengths is not None)
    writer.add(arrays, lengths)
    return writer.close()


def has_split(folder: Path, split: str) -> bool:
    return (folder / f"{split}.index.json").is_file() or (folder / f"{split}.safetensors").is_file()


class RowSource:
    """The rows of one split, memory-mapped; `take(rows)` reads just those rows of every tensor."""

    def __init__(self, folder: Path, split: str, *, rebuild: str = "the job that wrote it", verify: bool = False) -> None:
        from safetensors import safe_open

        self.folder, self.split = Path(folder), split
        index_path = self.folder / f"{split}.index.json"
        if index_path.is_file():
            index = json.loads(index_path.read_text(encoding="utf-8"))
            if index.get("format") != FORMAT:
                raise ShardError(f"{index_path}: unknown format {index.get('format')!r}; rebuild {rebuild}")
            entries = index["shards"]
            self._lengths = np.asarray(index.get("lengths", []), dtype=np.int64) if "lengths" in index else None
        elif (self.folder / f"{split}.safetensors").is_file():
            path = self.folder / f"{split}.safetensors"
            entries = [{"file": path.name, "rows": None, "bytes": path.stat().st_size}]
            self._lengths = None
        else:
            raise ShardError(f"{self.folder}: no '{split}' rows ({split}.index.json or {split}.safetensors); rebuild {rebuild}")
        self._files, self._starts, self.metadata = [], [], {}
        start = 0
        for entry in entries:
            path = self.folder / entry["file"]
            if os.path.basename(entry["file"]) != entry["file"]:
                raise ShardError(f"{index_path}: shard name {entry['file']!r} is not a file name; rebuild {rebuild}")
            if not path.is_file():
                raise ShardError(f"{path}: shard missing ({entry['rows']} rows); rebuild {rebuild}")
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise ShardError(f"{path}: shard truncated or altered ({size} of {entry['bytes']} bytes); rebuild {rebuild}")
            if verify and entry.get("sha256") and _sha256(path) != entry["sha256"]:
                raise ShardError(f"{path}: shard content differs from its index (sha256); rebuild {rebuild}")
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
                raise ShardError(f"{path}: unreadable shard ({exc}); rebuild {rebuild}") from None
            names = list(handle.keys())
            n = handle.get_slice(names[0]).get_shape()[0] if names else 0
            if entry["rows"] is not None and n != entry["rows"]:
                raise ShardError(f"{path}: {n} rows where the index says {entry['rows']}; rebuild {rebuild}")
            self.metadata = handle.metadata() or {}
            self._files.append(handle)
            self._starts.append(start)
            start += n
        self.rows = start
        self.names = list(self._files[0].keys()) if self._files else []
        self._shapes = {k: list(self._files[0].get_slice(k).get_shape()[1:]) for k in self.names} if self._files else {}

    def shape(self, name: str) -> list[int]:
        """A tensor's shape without the row dimension."""
        return self._shapes[name]

    def lengths(self) -> np.ndarray:
        """Each row's real length (attention_mask's sum), from the index, or read a shard at a time."""
        if self._lengths is None:
            parts = [handle.get_tensor("attention_mask").sum(dim=1).numpy() for handle in self._files]
            self._lengths = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return self._lengths

    def take(self, name: str, rows: Sequence[int], columns: int | None = None) -> torch.Tensor:
        """Rows `rows` (in that order) of tensor `name`, cut to the first `columns` positions when given."""
        if not rows:
            raise IndexError("take: no rows")
        out: list[torch.Tensor | None] = [None] * len(rows)
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for i, r in enumerate(rows):
            if not 0 <= r < self.rows:
                raise IndexError(f"row {r} outside 0..{self.rows - 1}")
            s = int(np.searchsorted(self._starts, r, side="right")) - 1
            by_shard.setdefault(s, []).append((r - self._starts[s], i))
        for s, wanted in by_shard.items():
            sl = self._files[s].get_slice(name)
            for local, i in wanted:
                t = sl[local:local + 1]
                out[i] = t[:, :columns] if columns is not None else t
        return torch.cat(out)  # type: ignore[arg-type]

    def read_all(self, name: str) -> torch.Tensor:
        """A whole tensor (every shard): for jobs that walk a split once (teacher, eval), not the trainer."""
        return torch.cat([handle.get_tensor(name) for handle in self._files]) if self._files else torch.zeros(0)


def read_split(folder: Path, split: str, *, numpy: bool = False) -> dict[str, Any]:
    """Every tensor of a split, whole (tests and small tools; the trainer reads a batch at a time)."""
    source = RowSource(folder, split)
    out = {name: source.read_all(name) for name in source.names}
    return {k: v.numpy() for k, v in out.items()} if numpy else out

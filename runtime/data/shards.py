"""Row tensors in shards, read memory-mapped a few rows at a time.

A split of rows (the dataset and generate jobs' token rows, the teacher jobs' targets) is written
as shards of at most `SHARD_ROWS` rows, `{split}-00000.safetensors`, ..., and an index
`{split}.index.json`: every shard's file name, row count, byte size and sha256, and the rows'
real lengths. A reader (`RowSource`) parses each shard's safetensors header and reads only the
bytes of the rows a batch needs (`os.pread`; no mapping, whose readahead would pull neighbouring
rows into the process's resident set), so a rank's memory does not grow with the dataset: it
holds the index and one batch.

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


DTYPES = {"I32": np.int32, "I64": np.int64, "F32": np.float32, "F16": np.float16, "I8": np.int8, "U8": np.uint8,
          "I16": np.int16, "F64": np.float64, "BOOL": np.bool_}


class _Shard:
    """One safetensors file read with positioned reads (`os.pread`) of exactly the bytes asked for: no mapping,
    so the rows a rank never asks for never enter its memory (not even as page-cache pages in its RSS).
    The header is parsed and checked against the file's size on open (a truncated file is refused)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > min(size - 8, 100 << 20):
                raise ValueError(f"header length {n} does not fit the file ({size} bytes)")
            header = json.loads(fh.read(n))
        self.metadata = header.pop("__metadata__", None) or {}
        self.base = 8 + n
        self.tensors: dict[str, tuple[np.dtype, list[int], int, int]] = {}
        end = 0
        for name, t in header.items():
            if t["dtype"] not in DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {t['dtype']}, not one rows use")
            dtype, shape, (lo, hi) = np.dtype(DTYPES[t["dtype"]]), list(t["shape"]), t["data_offsets"]
            if hi - lo != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise ValueError(f"tensor {name!r}: {hi - lo} bytes for shape {shape}")
            self.tensors[name] = (dtype, shape, lo, hi)
            end = max(end, hi)
        if self.base + end != size:
            raise ValueError(f"{size} bytes where the header describes {self.base + end}")
        self.fd = os.open(path, os.O_RDONLY)

    def __del__(self) -> None:
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)

    @property
    def rows(self) -> int:
        return self.tensors[next(iter(self.tensors))][1][0] if self.tensors else 0

    def read_rows(self, name: str, start: int, stop: int, columns: int | None) -> np.ndarray:
        """Rows [start, stop) of `name`, cut to the first `columns` positions (one read per row when cut)."""
        dtype, shape, lo, _ = self.tensors[name]
        row_items = int(np.prod(shape[1:], dtype=np.int64))
        row_bytes = row_items * dtype.itemsize
        if columns is None or columns >= shape[1]:
            raw = os.pread(self.fd, (stop - start) * row_bytes, self.base + lo + start * row_bytes)
            return np.frombuffer(raw, dtype=dtype).reshape([stop - start, *shape[1:]])
        inner = int(np.prod(shape[2:], dtype=np.int64))
        want = columns * inner * dtype.itemsize
        out = np.empty([stop - start, columns, *shape[2:]], dtype=dtype)
        for i, r in enumerate(range(start, stop)):
            raw = os.pread(self.fd, want, self.base + lo + r * row_bytes)
            out[i] = np.frombuffer(raw, dtype=dtype).reshape([columns, *shape[2:]])
        return out


class RowSource:
    """The rows of one split in its shards; `take(rows)` reads just those rows of a tensor."""

    def __init__(self, folder: Path, split: str, *, rebuild: str = "the job that wrote it", verify: bool = False) -> None:
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
        self._files: list[_Shard] = []
        self._starts: list[int] = []
        self.metadata: dict[str, str] = {}
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
                shard = _Shard(path)
            except (ValueError, OSError, UnicodeDecodeError, KeyError, TypeError) as exc:
                raise ShardError(f"{path}: unreadable shard ({exc}); rebuild {rebuild}") from None
            if entry["rows"] is not None and shard.rows != entry["rows"]:
                raise ShardError(f"{path}: {shard.rows} rows where the index says {entry['rows']}; rebuild {rebuild}")
            self.metadata = shard.metadata
            self._files.append(shard)
            self._starts.append(start)
            start += shard.rows
        self.rows = start
        first = self._files[0] if self._files else None
        self.names = list(first.tensors) if first else []
        self._shapes = {k: first.tensors[k][1][1:] for k in self.names} if first else {}

    def shape(self, name: str) -> list[int]:
        """A tensor's shape without the row dimension."""
        return self._shapes[name]

    def lengths(self) -> np.ndarray:
        """Each row's real length (attention_mask's sum), from the index, or read a shard at a time."""
        if self._lengths is None:
            parts = [f.read_rows("attention_mask", 0, f.rows, None).sum(axis=1) for f in self._files]
            self._lengths = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
        return self._lengths

    def take(self, name: str, rows: Sequence[int], columns: int | None = None) -> torch.Tensor:
        """Rows `rows` (in that order) of tensor `name`, cut to the first `columns` positions when given."""
        if not rows:
            raise IndexError("take: no rows")
        parts = []
        for r in rows:
            if not 0 <= r < self.rows:
                raise IndexError(f"row {r} outside 0..{self.rows - 1}")
            s = int(np.searchsorted(self._starts, r, side="right")) - 1
            local = r - self._starts[s]
            parts.append(self._files[s].read_rows(name, local, local + 1, columns))
        return torch.from_numpy(np.concatenate(parts))

    def read_all(self, name: str) -> torch.Tensor:
        """A whole tensor (every shard): for jobs that walk a split once (teacher, eval), not the trainer."""
        if not self._files:
            return torch.zeros(0)
        return torch.from_numpy(np.concatenate([f.read_rows(name, 0, f.rows, None) for f in self._files]))


def read_split(folder: Path, split: str, *, numpy: bool = False) -> dict[str, Any]:
    """Every tensor of a split, whole (tests and small tools; the trainer reads a batch at a time)."""
    source = RowSource(folder, split)
    out = {name: source.read_all(name) for name in source.names}
    return {k: v.numpy() for k, v in out.items()} if numpy else out

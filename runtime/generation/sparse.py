"""Sparse, memory-mapped per-token teacher logprobs (top-k ids + logprobs + the mass outside them).

A store is a folder:

    meta.json       {"format": FORMAT, "k", "tokens" (N), "sequences" (S), "vocab_size" (or null),
                     "dtypes": {...}, "tail": what `tail` holds}
    ids.npy         int32   [N, k]  token ids, best first; -1 = absent (the server returned fewer)
    logprobs.npy    float16 [N, k]  the teacher's FULL-distribution logprobs (temperature 1), not
                                    renormalised over the k; -inf where the id is absent
    tail.npy        float32 [N]     natural log of the mass outside the present ids,
                                    log(max(0, 1 - sum exp(logprob))), from the unrounded
                                    logprobs in float64; -inf when that mass is 0
    offsets.npy     int64   [S+1]   sequence s is rows offsets[s] .. offsets[s+1]

Row r of a sequence is the teacher's distribution of token r+1 given tokens 0..r (the convention
of `jobs/teacher_targets.py`), consumed by `train/sparse_kl.py`.

Size: 4k (ids) + 2k (logprobs) + 4 (tail) bytes per token, plus 8 per sequence and ~0.9 kB of
headers and meta.json per store: 124 B/token at k=20 (`bytes_per_token()` counts every file;
124.1 measured on the test's 40-sequence, 9,989-token store). float32 logprobs would cost
164 B/token (over the 130 budget); int32 ids are needed for vocabularies over 65536.

float16 error, measured (V=32000, k=20, 64 positions per case, teacher logits N(0, s^2) with
s in {1, 3, 8, 20} (mean tail mass 0.99 .. 4e-6), student = teacher + N(0, n^2), n in {0.3, 1, 3};
`kl_sparse_tail` in float64 on float64 vs float16-rounded logprobs): with the stored float32
`tail` passed as `teacher_log_tail`, the loss (mean over the 64 positions) moves by at most
3.4e-5 nats and 4.3e-4 relative, a single position by at most 9.8e-4 nats; re-deriving the tail
from the float16 logprobs instead gives up to 6.0e-3 relative on a peaked teacher (tail ~4e-6,
where 1 - sum p cancels). Hence `tail` is stored (float32, in log form so that a tiny tail keeps
its relative precision) and should be passed to the loss. float16 rounding moves log p by at
most |log p| * 2^-11, so p moves by < 0.05 % for p > e^-1 and ~1 % only below p = e^-20.
`tests/generation/test_sparse.py` re-checks a smaller case through the writer and reader.

Writing: `SparseWriter` appends sequences to raw files in a sibling temp folder
`.<name>.partial-*` (each .npy gets a fixed 128-byte header slot, filled in at the end), and
`finalise()` writes the headers, offsets and meta.json (last), fsyncs and `os.replace`s the
folder onto its name. A writer killed before that leaves only the partial folder (no meta.json,
zeroed headers): never readable as a store. `SparseStore` memory-maps the arrays
(`allow_pickle=False`), validates meta, dtypes, shapes, offsets and id ranges, and hands out
per-sequence views without reading the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

FORMAT = "sparse-logprobs-v1"
DTYPES = {"ids": np.dtype(np.int32), "logprobs": np.dtype(np.float16), "tail": np.dtype(np.float32),
          "offsets": np.dtype(np.int64)}
ROW_ARRAYS = ("ids", "logprobs", "tail")
HEADER_BYTES = 128  # fixed .npy header slot (a multiple of 64, as numpy aligns data)
TAIL_MEANING = "natural log of the probability mass outside the present ids (-inf when none)"
CHECK_ROWS = 1 << 20  # rows per chunk when scanning ids on open


class SparseStoreError(ValueError):
    pass


@dataclass(frozen=True)
class SparseSequence:
    ids: np.ndarray  # int32 [n, k], -1 = absent
    logprobs: np.ndarray  # float16 [n, k], -inf where absent
    log_tail: np.ndarray  # float32 [n]


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    body = repr(d).encode("latin1")
    pad = HEADER_BYTES - 10 - len(body) - 1
    if pad < 0:
        raise SparseStoreError(f"npy header for shape {shape} does not fit {HEADER_BYTES} bytes")
    return b"\x93NUMPY\x01\x00" + (HEADER_BYTES - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"


def pad_entries(entries: Sequence[Sequence[tuple[int, float]]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-token lists of (id, logprob) (at most k each, as a server returned them) as padded arrays."""
    ids = np.full((len(entries), k), -1, dtype=np.int64)
    lps = np.full((len(entries), k), -np.inf, dtype=np.float64)
    for r, alts in enumerate(entries):
        if len(alts) > k:
            raise SparseStoreError(f"token {r}: {len(alts)} alternatives, more than k={k}")
        for c, (tok, lp) in enumerate(alts):
            ids[r, c], lps[r, c] = tok, lp
    return ids, lps


def log_tail(logprobs: np.ndarray) -> np.ndarray:
    """log(max(0, 1 - sum exp(logprobs))) per row, in float64 (-inf entries contribute nothing)."""
    mass = np.exp(np.asarray(logprobs, dtype=np.float64)).sum(axis=-1)
    with np.errstate(divide="ignore"):
        return np.log(np.clip(1.0 - mass, 0.0, None))


def _check_rows(ids: np.ndarray, lps: np.ndarray, k: int, vocab_size: int | None) -> None:
    if ids.ndim != 2 or lps.shape != ids.shape or ids.shape[1] > k:
        raise SparseStoreError(f"ids {ids.shape} and logprobs {lps.shape} must both be [n, <= k={k}]")
    if not np.issubdtype(ids.dtype, np.integer):
        raise SparseStoreError(f"ids must be integers, got {ids.dtype}")
    absent = ids == -1
    if (ids < -1).any() or (vocab_size is not None and (ids >= vocab_size).any()):
        raise SparseStoreError(f"ids must lie in [-1, {vocab_size}) (-1 = absent)")
    if np.isnan(lps).any() or (lps[~absent] == -np.inf).any() or (lps[~absent] > 1e-3).any():
        raise SparseStoreError("logprobs must be finite and <= 0 (up to rounding) for every present id")
    s = np.sort(np.where(absent, -1 - np.arange(ids.shape[1]), ids), axis=1)
    if (s[:, 1:] == s[:, :-1]).any():
        raise SparseStoreError("an id occurs twice in the same token's alternatives")


class SparseWriter:
    """Appends sequences to `path` (which must not exist unless overwrite), atomically on finalise()."""

    def __init__(self, path: str | os.PathLike, k: int, vocab_size: int | None = None, overwrite: bool = False):
        self.path, self.k, self.vocab_size, self.overwrite = Path(path), int(k), vocab_size, overwrite
        if self.k < 1:
            raise SparseStoreError(f"k must be >= 1, got {k}")
        if self.path.exists() and not overwrite:
            raise SparseStoreError(f"{self.path} exists (pass overwrite=True to replace it)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent))
        self.files = {n: open(self.tmp / f"{n}.npy", "wb") for n in ROW_ARRAYS}
        for fh in self.files.values():
            fh.write(b"\0" * HEADER_BYTES)  # an unreadable header until finalise() writes the real one
        self.offsets = [0]
        self.done = False

    def append(self, ids: np.ndarray, logprobs: np.ndarray) -> int:
        """One sequence: ids [n, k'] and full-distribution logprobs [n, k'] (k' <= k; -1 / -inf
        mark absent entries, short rows are padded). Returns the sequence's index."""
        if self.done:
            raise SparseStoreError("append() after finalise()/abort()")
        ids, lps = np.asarray(ids), np.asarray(logprobs, dtype=np.float64)
        _check_rows(ids, lps, self.k, self.vocab_size)
        n = ids.shape[0]
        if ids.shape[1] < self.k:
            ids = np.concatenate([ids, np.full((n, self.k - ids.shape[1]), -1, dtype=ids.dtype)], axis=1)
            lps = np.concatenate([lps, np.full((n, self.k - lps.shape[1]), -np.inf)], axis=1)
        lps = np.where(ids == -1, -np.inf, np.maximum(lps, np.finfo(np.float16).min))  # no -inf for present ids
        self.files["ids"].write(np.ascontiguousarray(ids, dtype="<i4").tobytes())
        self.files["logprobs"].write(np.ascontiguousarray(lps, dtype="<f2").tobytes())
        self.files["tail"].write(np.ascontiguousarray(log_tail(lps), dtype="<f4").tobytes())
        self.offsets.append(self.offsets[-1] + n)
        return len(self.offsets) - 2

    def append_entries(self, entries: Sequence[Sequence[tuple[int, float]]]) -> int:
        return self.append(*pad_entries(entries, self.k))

    def finalise(self) -> Path:
        if self.done:
            raise SparseStoreError("finalise() called twice or after abort()")
        n, s = self.offsets[-1], len(self.offsets) - 1
        shapes = {"ids": (n, self.k), "logprobs": (n, self.k), "tail": (n,)}
        for name, fh in self.files.items():
            fh.seek(0)
            fh.write(_npy_header(DTYPES[name], shapes[name]))
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        np.save(self.tmp / "offsets.npy", np.asarray(self.offsets, dtype=DTYPES["offsets"]), allow_pickle=False)
        meta = {"format": FORMAT, "k": self.k, "tokens": n, "sequences": s, "vocab_size": self.vocab_size,
                "dtypes": {name: dt.name for name, dt in DTYPES.items()}, "tail": TAIL_MEANING}
        with open(self.tmp / "meta.json", "w") as fh:
            json.dump(meta, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        old = None
        if self.path.exists():  # overwrite: move the old store aside first (a folder rename cannot replace it)
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-", dir=self.path.parent))
            os.replace(self.path, old / "store")
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.done = True
        return self.path

    def abort(self) -> None:
        for fh in self.files.values():
            fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.done = True

    def __enter__(self) -> "SparseWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.done:
            self.finalise()


class SparseStore:
    """A finalised store, memory-mapped and validated on open (ids checked against vocab_size if given)."""

    def __init__(self, path: str | os.PathLike, vocab_size: int | None = None):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise SparseStoreError(f"{self.path}: no meta.json, not a finalised sparse store (a writer killed before "
                                   "finalise() leaves a '.<name>.partial-*' folder; delete it and regenerate)")
        try:
            meta = json.loads(meta_path.read_text())
            self.k, self.n_tokens, self.n_sequences = int(meta["k"]), int(meta["tokens"]), int(meta["sequences"])
            fmt, dtypes = meta["format"], meta["dtypes"]
        except (ValueError, KeyError, TypeError) as e:
            raise SparseStoreError(f"{meta_path}: corrupt meta.json ({type(e).__name__}: {e})") from None
        if fmt != FORMAT:
            raise SparseStoreError(f"{meta_path}: format {fmt!r}, this reader reads {FORMAT!r}")
        if dtypes != {name: dt.name for name, dt in DTYPES.items()}:
            raise SparseStoreError(f"{meta_path}: dtypes {dtypes}, expected {({n: d.name for n, d in DTYPES.items()})}")
        if self.k < 1 or self.n_tokens < 0 or self.n_sequences < 0:
            raise SparseStoreError(f"{meta_path}: k={self.k}, tokens={self.n_tokens}, sequences={self.n_sequences}")
        self.meta = meta
        shapes = {"ids": (self.n_tokens, self.k), "logprobs": (self.n_tokens, self.k), "tail": (self.n_tokens,),
                  "offsets": (self.n_sequences + 1,)}
        self.arrays: dict[str, np.ndarray] = {}
        for name, shape in shapes.items():
            file = self.path / f"{name}.npy"
            try:
                arr = np.load(file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise SparseStoreError(f"{file}: unreadable ({type(e).__name__}: {e})") from None
            if arr.dtype != DTYPES[name] or arr.shape != shape:
                raise SparseStoreError(f"{file}: {arr.dtype} {arr.shape}, meta.json says {DTYPES[name]} {shape}")
            self.arrays[name] = arr
        self.offsets = np.array(self.arrays["offsets"])
        if self.offsets[0] != 0 or self.offsets[-1] != self.n_tokens or (np.diff(self.offsets) < 0).any():
            raise SparseStoreError(f"{self.path}/offsets.npy: must rise monotonically from 0 to {self.n_tokens} tokens")
        vocab = vocab_size if vocab_size is not None else meta.get("vocab_size")
        ids = self.arrays["ids"]
        for start in range(0, self.n_tokens, CHECK_ROWS):
            chunk = ids[start:start + CHECK_ROWS]
            lo, hi = int(chunk.min()), int(chunk.max())
            if lo < -1 or (vocab is not None and hi >= vocab):
                raise SparseStoreError(f"{self.path}/ids.npy: ids in [{lo}, {hi}] outside [-1, {vocab}) "
                                       f"(rows {start}..{start + len(chunk)})")

    def __len__(self) -> int:
        return self.n_sequences

    def __getitem__(self, s: int) -> SparseSequence:
        if not -self.n_sequences <= s < self.n_sequences:
            raise IndexError(f"sequence {s} of {self.n_sequences}")
        s %= max(self.n_sequences, 1)
        a, b = int(self.offsets[s]), int(self.offsets[s + 1])
        return SparseSequence(self.arrays["ids"][a:b], self.arrays["logprobs"][a:b], self.arrays["tail"][a:b])

    def padded(self, sequences: Sequence[int], length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids int64 / logprobs float32 [B, length, k] and log_tail float32 [B, length] for these
        sequences, cut or padded (id -1, logprob -inf, tail 0 = all mass outside) to `length`."""
        ids = np.full((len(sequences), length, self.k), -1, dtype=np.int64)
        lps = np.full((len(sequences), length, self.k), -np.inf, dtype=np.float32)
        tail = np.zeros((len(sequences), length), dtype=np.float32)
        for i, s in enumerate(sequences):
            seq = self[s]
            n = min(length, len(seq.ids))
            ids[i, :n], lps[i, :n], tail[i, :n] = seq.ids[:n], seq.logprobs[:n], seq.log_tail[:n]
        return ids, lps, tail

    def bytes_per_token(self) -> float:
        """Every byte of the store's files (headers and meta.json included) per token."""
        total = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
        return total / max(self.n_tokens, 1)

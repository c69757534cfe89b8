"""Top-k teacher targets for the student trainer, with a per-sample cache shared across runs.

A split's targets are ``topk_ids`` (int32) and ``topk_logits`` (float32, raw logits sorted
descending), both ``[rows, T, k]`` where T is the split's longest real row: position t of row i
holds the teacher's k best next tokens after reading tokens 0..t of dataset row i (the
prediction of token t+1); positions at or past the row's length are zero.

Hashes (all sha256, hex):
  - ``weights_sha256``: the teacher's tensors (sorted names, dtype, shape, bytes), independent
    of file format and transformers version.
  - ``sample_sha256``: a row's real token ids as little-endian int32 bytes (the student trainer
    recomputes it to check that target row i is dataset row i).
  - cache key: ``CACHE_FORMAT``, teacher hash, top_k and sample hash.

Cache layout: ``cache_dir/<CACHE_FORMAT>/<teacher_sha[:16]>/<key[:2]>/<key>.safetensors`` with
``ids`` ``[n, k]`` and ``logits`` ``[n, k]``, written to a temporary file and renamed into
place. An entry that does not load, has the wrong shape or dtype, holds a non-finite logit or
names another key is recomputed and overwritten, never trusted.

Misses are computed without padding, grouped by exact length (``BATCH_TOKENS`` per forward); a
token sequence that occurs in several rows is computed once (one miss, the copies count as hits).
Logits are projected in chunks of ``LOGIT_CHUNK_TOKENS`` positions so a large vocabulary fits.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

CACHE_FORMAT = "targets-v1"
BATCH_TOKENS = 8192  # tokens per teacher forward when computing targets
LOGIT_CHUNK_TOKENS = 4096  # positions projected onto the vocabulary at once


def weights_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sample_sha256(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype="<i4").tobytes()).hexdigest()


def cache_key(teacher_sha: str, top_k: int, sample_sha: str) -> str:
    return hashlib.sha256(f"{CACHE_FORMAT}\0{teacher_sha}\0{top_k}\0{sample_sha}".encode()).hexdigest()


class TargetCache:
    """Per-sample targets under ``root`` (None: no caching)."""

    def __init__(self, root: Path | None, teacher_sha: str, top_k: int):
        self.dir = Path(root) / CACHE_FORMAT / teacher_sha[:16] if root is not None else None
        self.teacher_sha, self.top_k = teacher_sha, top_k
        self.hits = self.misses = self.rejected = 0

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def get(self, key: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        if self.dir is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as fh:
                ok_key = (fh.metadata() or {}).get("key") == key
                ids, logits = fh.get_tensor("ids"), fh.get_tensor("logits")
        except Exception:  # noqa: BLE001 - any unreadable entry is recomputed
            ok_key = False
        if (not ok_key or ids.shape != (n, self.top_k) or logits.shape != (n, self.top_k) or ids.dtype != np.int32
                or logits.dtype != np.float32 or not np.isfinite(logits).all()):
            self.rejected += 1
            return None
        return ids, logits

    def put(self, key: str, ids: np.ndarray, logits: np.ndarray) -> None:
        if self.dir is None:
            return
        from safetensors.numpy import save_file

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        try:
            save_file({"ids": ids, "logits": logits}, tmp, metadata={"key": key})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


@torch.no_grad()
def topk_rows(model, rows: list[np.ndarray], top_k: int, device: torch.device,
              vocab_rows: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids [n, k] int32, logits [n, k] float32) per row; all rows must have the same length n.
    Only the first `vocab_rows` logits are ranked (padded embedding rows beyond the tokenizer never are)."""
    ids = torch.as_tensor(np.stack(rows), dtype=torch.long, device=device)
    hidden = model.get_decoder()(input_ids=ids).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])
    head = model.get_output_embeddings()
    out_ids, out_logits = [], []
    for chunk in hidden.split(LOGIT_CHUNK_TOKENS):
        logits = head(chunk.to(head.weight.device))
        if vocab_rows is not None and vocab_rows < logits.shape[-1]:
            logits = logits[..., :vocab_rows]
        values, indices = logits.float().topk(top_k, dim=-1, sorted=True)
        out_logits.append(values)
        out_ids.append(indices)
    b, n = ids.shape
    vals = torch.cat(out_logits).reshape(b, n, top_k).cpu().numpy()
    idx = torch.cat(out_ids).reshape(b, n, top_k).to(torch.int32).cpu().numpy()
    return [(idx[i], vals[i]) for i in range(b)]


def split_targets(model, input_ids: np.ndarray, lengths: np.ndarray, top_k: int, cache: TargetCache,
                  device: torch.device, advance: Callable[..., None],
                  vocab_rows: int | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """The split's ``topk_ids`` / ``topk_logits`` and each row's sample hash, through the cache."""
    rows, T = len(lengths), int(lengths.max(initial=0))
    out_ids = np.zeros((rows, T, top_k), dtype=np.int32)
    out_logits = np.zeros((rows, T, top_k), dtype=np.float32)
    shas = [sample_sha256(input_ids[r, :lengths[r]]) for r in range(rows)]
    keys = [cache_key(cache.teacher_sha, top_k, s) for s in shas]
    missing: dict[int, dict[str, list[int]]] = {}  # length -> key -> rows (identical rows are computed once)
    for r in range(rows):
        n = int(lengths[r])
        hit = cache.get(keys[r], n)
        if hit is None:
            missing.setdefault(n, {}).setdefault(keys[r], []).append(r)
            continue
        cache.hits += 1
        out_ids[r, :n], out_logits[r, :n] = hit
        advance(1)
    for n in sorted(missing, reverse=True):
        group = list(missing[n].values())
        per_batch = max(1, BATCH_TOKENS // max(n, 1))
        for start in range(0, len(group), per_batch):
            batch = group[start:start + per_batch]
            computed = topk_rows(model, [input_ids[same[0], :n] for same in batch], top_k, device, vocab_rows)
            for same, (ids, logits) in zip(batch, computed):
                out_ids[same, :n], out_logits[same, :n] = ids, logits
                cache.put(keys[same[0]], ids, logits)
                cache.misses += 1
                cache.hits += len(same) - 1
                advance(len(same))
    return {"topk_ids": out_ids, "topk_logits": out_logits}, shas

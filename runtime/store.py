"""The content-addressed store: completed outputs under their cache key, staging, quarantine, lock.

Layout of a store (default `.modelspec/`):

    lock                      flock held by the one run that uses the store
    jobs/<kind>/<key>/        outputs of a finished job + `_complete.json`, written last
    staging/<random>/         a job's outputs while it runs (same filesystem; renamed into place)
    work/<spec>/<job>/        resumable scratch of a running job (training checkpoints); kept
                              across spec edits so a changed job can refuse a foreign checkpoint
    cache/<kind>/             content-addressed caches shared across runs (teacher top-k targets)
    plans/<key>.json          compiled plans by spec bytes, overrides and compiler code (runtime.plan)
    quarantine/<key>-<n>/     cached outputs that failed their hash check
    index/<spec>.json         job id -> last completed key and params (for `status` reasons)

A job is done only when its folder exists under `jobs/`: the folder is renamed into place in
one step after every output and the completion record were written, so a killed run leaves
either no folder or a complete one. A forced rerun replaces an existing folder by swapping the
two atomically (Linux renameat2 RENAME_EXCHANGE) and then quarantining the old copy from the
staging path, so a kill at any moment leaves a complete folder in place; where the exchange is
not supported it falls back to quarantine-then-rename, whose gap leaves no folder (the job then
reruns: nothing partial is ever done).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import faults
from .hashing import tree_bytes, tree_sha256

RECORD = "_complete.json"



def fsync_dir(path: Path) -> None:
    """Make a rename or link inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

class CorruptOutput(Exception):
    pass


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False where the OS or filesystem
    cannot, and the caller falls back to two renames."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@dataclass
class Store:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).absolute()
        for sub in ("jobs", "staging", "work", "quarantine", "index", "cache", "plans"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- lock -------------------------------------------------------------------------------
    def lock(self, wait_message=None) -> "StoreLock":
        return StoreLock(self.root / "lock", wait_message)

    # -- completed jobs ---------------------------------------------------------------------
    def job_dir(self, kind: str, key: str) -> Path:
        return self.root / "jobs" / kind / key

    def record(self, kind: str, key: str) -> dict | None:
        """The completion record, or None. A job folder or record that is a symlink is never
        trusted (something planted it: the job reruns and the link is quarantined on commit)."""
        path = self.job_dir(kind, key) / RECORD
        if self.job_dir(kind, key).is_symlink() or path.is_symlink():
            return None
        try:
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def verify(self, kind: str, key: str, record: dict) -> list[str]:
        """Names of outputs that are missing or whose sha256 differs from the record."""
        bad = []
        base = self.job_dir(kind, key)
        for name, meta in record["outputs"].items():
            rel = Path(str(meta.get("path", "")))
            if not rel.parts or rel.is_absolute() or ".." in rel.parts:  # a tampered record
                bad.append(name)
                continue
            path = base / rel
            try:
                if not path.exists() or tree_sha256(path) != meta["sha256"]:
                    bad.append(name)
            except (OSError, ValueError):
                bad.append(name)
        return bad

    def quarantine(self, kind: str, key: str) -> Path:
        src = self.job_dir(kind, key)
        dst = self.root / "quarantine" / f"{key}-{time.time_ns()}"
        os.rename(src, dst)
        return dst

    # -- staging ----------------------------------------------------------------------------
    def new_staging(self, key: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{key[:16]}-", dir=self.root / "staging"))

    def clear_staging(self) -> None:
        """Remove leftovers of killed runs; only called while holding the lock."""
        for child in (self.root / "staging").iterdir():
            shutil.rmtree(child, ignore_errors=True)

    def commit(self, staging: Path, kind: str, key: str, outputs: dict[str, str], record: dict) -> dict:
        """Hash the staged outputs, write the completion record last, rename into place."""
        entries = {}
        for name, rel in outputs.items():
            path = staging / rel
            if not path.exists():
                raise FileNotFoundError(f"job did not write its declared output '{name}' ({rel})")
            if path.is_symlink():
                raise ValueError(f"output '{name}' is a symlink")
            entries[name] = {"path": rel, "sha256": tree_sha256(path), "bytes": tree_bytes(path)}
        record = dict(record, outputs=entries)
        tmp = staging / (RECORD + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, staging / RECORD)
        target = self.job_dir(kind, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():  # a planted link: keep it for inspection
            self.quarantine(kind, key)
        elif target.exists():  # a forced rerun, or a corrupt earlier copy: swap, then keep the old one for inspection
            if _exchange(staging, target):
                faults.point("after_swap", str(record.get("job", "")))
                os.rename(staging, self.root / "quarantine" / f"{key}-{time.time_ns()}")
                return record
            self.quarantine(kind, key)
        os.rename(staging, target)
        return record

    def work_dir(self, spec_name: str, job_id: str) -> Path:
        """Scratch of one job of one spec; names come from the validated spec and plan (safe segments)."""
        for part in (spec_name, job_id):
            if not part or "/" in part or part in (".", "..") or part.startswith("."):
                raise ValueError(f"unsafe path segment {part!r}")
        path = self.root / "work" / spec_name / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def drop_work(self, spec_name: str, job_id: str) -> None:
        shutil.rmtree(self.root / "work" / spec_name / job_id, ignore_errors=True)

    def remote_dir(self) -> Path:
        """Local copies of remote inputs, one folder per (URI, version) (runtime/remote/fetch.py)."""
        path = self.root / "remote"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def cache_dir(self, kind: str) -> Path:
        path = self.root / "cache" / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- index (last completed key per job id, for status reasons) --------------------------
    def index(self, spec_name: str) -> dict:
        try:
            with open(self.root / "index" / f"{spec_name}.json", encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def update_index(self, spec_name: str, entries: dict) -> None:
        data = self.index(spec_name) | entries
        path = self.root / "index" / f"{spec_name}.json"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".index-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)


class StoreLock:
    """An exclusive flock on the store; released by the kernel if the holder dies."""

    def __init__(self, path: Path, wait_message=None):
        self.path = path
        self.wait_message = wait_message
        self.fh = None

    def __enter__(self) -> "StoreLock":
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            (self.wait_message or (lambda: print(f"waiting for another modelspec run holding {self.path} ...", file=sys.stderr)))()
            fcntl.flock(self.fh, fcntl.LOCK_EX)
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.fh:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None

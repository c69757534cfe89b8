"""Content hashes of files and folders (sorted relative paths plus bytes)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's sorted (relative path, file sha256) pairs. Symlinks are refused."""
    if path.is_symlink():
        raise ValueError(f"refusing to hash a symlink: {path}")
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = Path(root) / name
            if full.is_symlink():
                raise ValueError(f"refusing to hash a symlink: {full}")
            rel = full.relative_to(path).as_posix()
            h.update(rel.encode() + b"\0" + file_sha256(full).encode() + b"\n")
    return h.hexdigest()


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum((Path(r) / f).stat().st_size for r, _, fs in os.walk(path) for f in fs)

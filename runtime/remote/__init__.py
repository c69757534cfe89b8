"""Inputs named by URI: versions for cache keys and local copies in the store (runtime/remote/fetch.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .fetch import RemoteInputError, check_uri, fetch, is_uri, version

__all__ = ["RemoteInputError", "check_uri", "fetch", "is_uri", "local_path", "version"]


def local_path(ctx: Any, value: str) -> Path:
    """A path from job params: a URI fetched into the store at the version the job was keyed with,
    a relative path against the spec's folder, an absolute path as is."""
    if is_uri(value):
        check_uri(value)
        remote_dir = getattr(ctx, "remote_dir", None)
        if remote_dir is None:
            raise RemoteInputError(f"'{value}': remote inputs are fetched into a store; run the job "
                                   "through `modelspec run`")
        keyed = (getattr(ctx, "external", None) or {}).get(value)  # "remote:<version>" (runtime/keys.py)
        return fetch(value, keyed.removeprefix("remote:") if keyed else None, Path(remote_dir))
    path = Path(value)
    return path if path.is_absolute() else Path(ctx.spec_dir) / path

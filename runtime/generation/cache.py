"""The response cache: every answered teacher request stored once, content-addressed.

The key is the sha256 of the canonical request: the format version, the endpoint, the pinned
model, the request body exactly as sent (messages, tools, generation settings, logprob settings,
server extensions) and the teacher tokenizer's hash. The API key is never part of it, and nothing
in an entry comes from a header. A changed generation setting changes the body, so it misses only
the entries it affects; a rerun after a kill sends no request whose response was stored.

An entry is `<root>/<key[:2]>/<key>.json`: `{"format", "key", "request", "body", "usage"}` where
`body` is the raw response text (parsed again on every read, so a parser fix needs no new
request). It is written to a temporary file in the same folder, fsynced, then linked into place:
a kill leaves either no entry or a whole one, and an existing entry is never overwritten. An
entry that does not parse or whose key does not match its request is moved aside to
`<root>/corrupt/` and counts as a miss (the request is sent again; nothing partial is trusted).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.store import fsync_dir

FORMAT = 1


def canonical(value: Any) -> str:
    """The one JSON text of a request: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def request_key(endpoint: str, model: str, body: dict[str, Any], tokenizer_sha256: str | None) -> tuple[str, dict[str, Any]]:
    """(key, the canonical request it hashes). `body` must not hold credentials (none is ever put there)."""
    request = {"format": FORMAT, "endpoint": endpoint.rstrip("/"), "model": model, "body": body,
               "teacher_tokenizer": tokenizer_sha256}
    return hashlib.sha256(canonical(request).encode("utf-8")).hexdigest(), request


@dataclass(frozen=True)
class Entry:
    key: str
    request: dict[str, Any]
    body: str
    usage: dict[str, Any]


class ResponseCache:
    """Content-addressed, write-once response store (safe across processes: writes are atomic links)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key[:80]!r}")
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Entry | None:
        path = self.path(key)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            request = data["request"]
            ok = data["format"] == FORMAT and data["key"] == key and \
                hashlib.sha256(canonical(request).encode("utf-8")).hexdigest() == key and isinstance(data["body"], str)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self._quarantine(path)
            return None
        return Entry(key, request, data["body"], dict(data.get("usage") or {}))

    def put(self, key: str, request: dict[str, Any], body: str, usage: dict[str, Any] | None) -> bool:
        """Store a response; False when an entry was already there (it is kept as it was)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = canonical({"format": FORMAT, "key": key, "request": request, "body": body, "usage": usage or {}})
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:12]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # fails when the entry exists: write once
            except FileExistsError:
                return False
            fsync_dir(path.parent)
            return True
        finally:
            os.unlink(tmp)

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def count(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json"))

    def _quarantine(self, path: Path) -> None:
        target = self.root / "corrupt"
        target.mkdir(exist_ok=True)
        try:
            os.replace(path, target / path.name)
        except FileNotFoundError:
            pass

"""The response cache: every answered teacher request stored once, content-addressed.

The key is the sha256 of the canonical request: the format version, the endpoint, the pinned
model, the request body exactly as sent (messages, tools, generation settings, logprob settings,
server extensions) and the teacher tokenizer's hash. The API key is never part of it, and nothing
in an entry comes from a header. A changed generation setting changes the body, so it misses only
the entries it affects; a rerun after a kill sends no request whose response was stored.

An entry is two files under `<root>/<key[:2]>/`: `<key>.body`, the raw response text byte for byte
(parsed again when its logprobs are read, so a parser fix needs no new request), and `<key>.json`,
`{"format", "key", "request", "usage", "message", "body_sha256"}`, where `message` is the answer's
turn (content and tool calls): what a resumed job needs to walk a conversation forward without
reading large bodies (a k=20 logprob body is ~3 KB per generated token). Each file is written to a
temporary file in the same folder, fsynced, then linked into place, the body first: `.json` is the
entry's completion mark, so a kill leaves either no entry or a whole one, and an existing entry is
never overwritten. An entry whose `.json` does not parse, whose key does not match its request or
whose body is missing or differs from its hash is moved aside to `<root>/corrupt/` and counts as a
miss (the request is sent again; nothing partial is trusted).
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

FORMAT = 2


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
    usage: dict[str, Any]
    message: dict[str, Any]  # {"content": str | None, "tool_calls": [{"id", "name", "arguments"}]}
    body_sha256: str


class ResponseCache:
    """Content-addressed, write-once response store (safe across processes: writes are atomic links)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The entry's `.json` (its `.body` sits beside it)."""
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key[:80]!r}")
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Entry | None:
        """The entry's small part (no body read: replaying 10,000 answers stays fast), or None."""
        path = self.path(key)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            request = data["request"]
            ok = data["format"] == FORMAT and data["key"] == key and isinstance(data["message"], dict) and \
                hashlib.sha256(canonical(request).encode("utf-8")).hexdigest() == key and \
                path.with_suffix(".body").is_file()
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self._quarantine(path)
            return None
        return Entry(key, request, dict(data.get("usage") or {}), data["message"], data["body_sha256"])

    def body(self, entry: Entry) -> str | None:
        """The raw response text, checked against its hash; None (and the entry moved aside) when it differs."""
        path = self.path(entry.key)
        try:
            raw = path.with_suffix(".body").read_bytes()
        except FileNotFoundError:
            raw = None
        if raw is None or hashlib.sha256(raw).hexdigest() != entry.body_sha256:
            self._quarantine(path)
            return None
        return raw.decode("utf-8")

    def put(self, key: str, request: dict[str, Any], body: str, usage: dict[str, Any] | None,
            message: dict[str, Any]) -> bool:
        """Store a response; False when an entry was already there (it is kept as it was)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            return False
        raw = body.encode("utf-8")
        _link_new(path.with_suffix(".body"), raw, replace_stale=True)
        meta = canonical({"format": FORMAT, "key": key, "request": request, "usage": usage or {}, "message": message,
                          "body_sha256": hashlib.sha256(raw).hexdigest()})
        created = _link_new(path, meta.encode("utf-8"), replace_stale=False)
        fsync_dir(path.parent)
        return created

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def count(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json"))

    def _quarantine(self, path: Path) -> None:
        target = self.root / "corrupt"
        target.mkdir(exist_ok=True)
        for p in (path, path.with_suffix(".body")):  # the completion mark first
            try:
                os.replace(p, target / p.name)
            except FileNotFoundError:
                pass


def _link_new(path: Path, data: bytes, replace_stale: bool) -> bool:
    """Write `data` to a temporary file, fsync it and link it at `path`. A `.body` left by a killed
    put (no `.json` beside it) is replaced; an existing `.json` is never: False."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:12]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace_stale:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

"""`modelspec fmt`: one canonical layout for a spec, comments kept, meaning provably unchanged.

How it works: the file is loaded and validated first (the safe loader: limits, no tags, every
problem with file:line:col). Then the text is read again into a node tree that keeps each
scalar's spelling and attaches every comment to the entry it belongs to (`yaml_tree.py`), and
that tree is re-emitted in the canonical form (`yaml_emit.py`, docs/authoring.md).

Before anything is written the output is loaded and validated again: its plain data and its
validated spec must equal the original's, and every comment must still be there, or
`FmtRefused` is raised and nothing is written.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

from compiler.authoring.yaml_emit import emit
from compiler.authoring.yaml_tree import parse_tree
from compiler.core.canonical import canonical_json
from compiler.core.errors import SpecError
from compiler.reading.loader import MAX_FILE_BYTES, Document, load_text


class FmtRefused(Exception):
    """The formatted text would not mean the same as the original (a formatter bug): nothing written."""


@dataclass(frozen=True)
class Formatted:
    path: str
    old: str
    new: str

    @property
    def changed(self) -> bool:
        return self.old != self.new


def _validated(text: str, file: str, spec_dir: str) -> tuple[Document, Any]:
    from compiler.reading.validate import validate_doc

    doc = load_text(text, file)
    return doc, validate_doc(doc, spec_dir)


def format_text(text: str, file: str = "<text>", spec_dir: str = ".") -> str:
    """Canonical text of a spec; SpecError if it does not load and validate, FmtRefused if meaning would change."""
    doc, spec = _validated(text, file, spec_dir)
    source = parse_tree(text)
    out = emit(source.root, spec, source.trailing, source.header)
    check_same(doc, spec, out, file, spec_dir, source.comments)
    return out


def check_same(doc: Document, spec: Any, out: str, file: str, spec_dir: str, comments: list[str] = ()) -> None:
    try:
        doc2, spec2 = _validated(out, file, spec_dir)
    except SpecError as exc:
        raise FmtRefused(f"{file}: the formatted text does not validate ({exc.problems[0].format()}); nothing written") from None
    if canonical_json(doc.data) != canonical_json(doc2.data):
        raise FmtRefused(f"{file}: formatting would change the spec's data; nothing written")
    if canonical_json(spec.model_dump(mode="json")) != canonical_json(spec2.model_dump(mode="json")):
        raise FmtRefused(f"{file}: formatting would change the validated spec; nothing written")
    kept = parse_tree(out).comments
    joined = "\n".join(kept)
    lost = [c for c in comments if c not in joined]
    if lost:
        raise FmtRefused(f"{file}: formatting would drop the comment {lost[0]!r}; nothing written")


def read_text(path: str) -> str:
    from compiler.core.errors import Problem

    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError([Problem(path, 1, 1, "<root>", f"cannot read spec: {exc.strerror}", "check the path")]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError([Problem(path, line, 1, "<root>", "file is not valid UTF-8", "save the spec as UTF-8")]) from None


def format_file(path: str) -> Formatted:
    old = read_text(path)
    return Formatted(path, old, format_text(old, path, os.path.dirname(os.path.abspath(path))))


def write_atomic(path: str, text: str) -> None:
    """Replace `path` with `text` through a temp file in the same folder (keeps the file's mode)."""
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            mode = os.stat(target).st_mode & 0o7777
        except OSError:  # a new file: what open() would have given it
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def iter_formatted(paths: list[str]) -> Iterator[Formatted]:
    for p in paths:
        yield format_file(p)

"""`modelspec fmt`: one canonical layout for a spec, comments kept, meaning provably unchanged.

How it works: the file is loaded and validated first (the safe loader: limits, no tags, every
problem with file:line:col). Then ruamel's parser (the same pure event stream the loader reads)
is walked again into a tree that keeps each scalar's source spelling and position; comments
and blank lines are found in the text (a `#` outside every scalar's span, at a line start or
after whitespace) and attached to the entry they belong to:

- a full-line comment leads the next key or list item (so it moves with that key when keys are
  reordered); comments before the first key stay on top, comments after the last entry trail
  the document;
- an end-of-line comment belongs to the outermost key or list item that starts on its line.

The tree is re-emitted in the canonical form (docs/authoring.md):

- 2-space indentation; block lists indented under their key (`key:` / `  - item`);
- keys in the schema's field order (`ORDER_OVERRIDES` lists the three places where the shipped
  specs put a naming key first); free-form maps (special tokens) keep the author's order;
- top-level sections and the named tables in `BLOCK_PATHS` are block style, one entry per line;
  every other mapping or list is a flow row (`{kind: swiglu, hidden: 352}`, `[64, 128]`) unless
  the line would pass `WIDTH` characters, then it is broken into block style;
- strings plain unless YAML needs quotes, then double-quoted; the fields in `QUOTED_PATHS`
  (globs, gate operators, token texts, reasons) are always double-quoted; numbers keep the
  author's decimal spelling (`1.0e-6`, `0.90`), hex/octal integers become decimal;
- one blank line before every top-level section; other blank lines only inside comment blocks;
  end-of-line comments keep their column when the content leaves room (two spaces at least);
- aliases are written out; exactly one trailing newline.

Before anything is written the output is loaded and validated again: its plain data and its
validated spec must equal the original's, and every comment must still be there, or
`FmtRefused` is raised and nothing is written.
"""

from __future__ import annotations

import bisect
import copy
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator

from pydantic import BaseModel

from compiler.core.canonical import canonical_json
from compiler.core.errors import SpecError
from compiler.reading.loader import _FLOAT, _INF, _NAN, MAX_FILE_BYTES, Document, load_text, resolve_plain

WIDTH = 120
INDENT = 2

# Collections always written block style (besides the root and every top-level value).
BLOCK_PATHS = frozenset({
    "tokenizer.special_tokens",
    "training.curriculum",
    "training.losses",
    "quantization.weights",
    "quantization.weights.rules",
    "precision.islands",
    "deployment.profiles",
})

# Strings always double-quoted: globs (`*` would start an alias), gate operators (`>` starts a
# folded scalar), token texts (markup-like) and free-text reasons.
QUOTED_PATHS = frozenset({
    "tokenizer.special_tokens.*.text",
    "quantization.weights.rules[].match",
    "precision.islands[].module",
    "precision.islands[].reason",
    "gates[].op",
})

# Field order is the schema's, except these keys come first (model class name -> keys).
ORDER_OVERRIDES: dict[str, tuple[str, ...]] = {
    "Architecture": ("vocab_size",),  # the vocabulary leads the architecture in every shipped spec
    "DenseRule": ("match",),  # a rule row starts with what it matches
    "QuantizedRule": ("match",),
    "Gate": ("metric", "op", "value", "min_n", "policy"),  # the sample floor belongs with the threshold
}

_INDICATORS = set("-?:,[]{}#&*!|>'\"%@`")
_FLOW_UNSAFE = set(",[]{}:#")


class FmtRefused(Exception):
    """The formatted text would not mean the same as the original (a formatter bug): nothing written."""


@dataclass(frozen=True)
class Raw:
    """A number with a chosen spelling, for code that builds a spec (`modelspec new`)."""

    text: str

    @property
    def value(self) -> int | float:
        v = resolve_plain(self.text)
        assert isinstance(v, (int, float)) and not isinstance(v, bool), self.text
        return v


@dataclass
class Comment:
    col: int
    text: str  # starts with '#', no trailing whitespace


@dataclass
class Node:
    kind: str  # scalar | map | seq
    line: int = 0  # 0-based, -1 for nodes that were not in the text
    value: Any = None  # scalars: the resolved value
    raw: str | None = None  # scalars: the source spelling
    plain: bool = True  # scalars: written without quotes in the source
    items: list = field(default_factory=list)  # map: [(key Node, value Node)]; seq: [Node]
    leading: list[str] = field(default_factory=list)  # comment texts, "" for a kept blank line
    eol: list[Comment] = field(default_factory=list)

    def data(self) -> Any:
        if self.kind == "scalar":
            return self.value
        if self.kind == "seq":
            return [n.data() for n in self.items]
        return {k.value: v.data() for k, v in self.items}


# --------------------------------------------------------------------------- reading


@dataclass
class _Source:
    root: Node
    trailing: list[str]
    comments: list[str]  # every comment text, in order
    header: list[str] = field(default_factory=list)  # comments before the first key: they stay on top


def _parse(text: str) -> _Source:
    """Text (already accepted by the safe loader) -> tree with comments attached."""
    from ruamel.yaml import YAML
    from ruamel.yaml.events import (AliasEvent, MappingEndEvent, MappingStartEvent, ScalarEvent, SequenceEndEvent,
                                    SequenceStartEvent, StreamEndEvent)

    yaml = YAML(typ="safe", pure=True)
    spans: list[tuple[int, int]] = []
    entries: list[tuple[int, Node]] = []  # (line, entry node) in document order: map keys and list items
    anchors: dict[str, Node] = {}
    stack: list[tuple[Node, list]] = []  # (collection, pending key for maps)
    root: Node | None = None

    def attach(node: Node, line: int, register: bool) -> None:
        nonlocal root
        if not stack:
            root = node
            return
        parent, pending = stack[-1]
        if parent.kind == "seq":
            parent.items.append(node)
            if register:
                entries.append((line, node))
        elif not pending:
            pending.append(node)
            if register:
                entries.append((line, node))
        else:
            parent.items.append((pending.pop(), node))

    for event in yaml.parse(text):
        if isinstance(event, StreamEndEvent):
            break
        line = event.start_mark.line if event.start_mark else 0
        if isinstance(event, ScalarEvent):
            spans.append((event.start_mark.index, event.end_mark.index))
            plain = event.style is None
            node = Node("scalar", line, resolve_plain(event.value) if plain else event.value, event.value, plain)
            if event.anchor:
                anchors[event.anchor] = node
            attach(node, line, True)
        elif isinstance(event, (MappingStartEvent, SequenceStartEvent)):
            node = Node("map" if isinstance(event, MappingStartEvent) else "seq", line)
            if event.anchor:
                anchors[event.anchor] = node
            attach(node, line, True)
            stack.append((node, []))
        elif isinstance(event, (MappingEndEvent, SequenceEndEvent)):
            stack.pop()
        elif isinstance(event, AliasEvent):
            attach(_strip(copy.deepcopy(anchors[event.anchor])), line, True)
    assert root is not None

    spans.sort()
    starts = [s for s, _ in spans]

    def in_scalar(index: int) -> bool:
        i = bisect.bisect_right(starts, index) - 1
        return i >= 0 and spans[i][0] <= index < spans[i][1]

    entry_lines = [ln for ln, _ in entries]
    pending: list[str] = []  # full-line comments and blanks waiting for the next entry
    leads: dict[int, list[str]] = {}
    all_comments: list[str] = []
    offset = 0
    for lineno, line in enumerate(text.split("\n")):
        start = offset
        offset += len(line) + 1
        if line.strip() == "":
            if not in_scalar(start):
                pending.append((lineno, ""))
            continue
        comment = None
        for m in re.finditer("#", line):
            p = m.start()
            if (p == 0 or line[p - 1] in " \t") and not in_scalar(start + p):
                comment = Comment(p, line[p:].rstrip())
                break
        if comment is None:
            continue
        all_comments.append(comment.text)
        if line[: comment.col].strip() == "":
            pending.append((lineno, comment.text))
            continue
        # end-of-line comment: the outermost entry that starts on this line, else the last one before it
        i = bisect.bisect_left(entry_lines, lineno)
        if i < len(entries) and entry_lines[i] == lineno:
            entries[i][1].eol.append(comment)
        elif i > 0:
            entries[i - 1][1].eol.append(comment)
        else:
            pending.append((lineno, comment.text))
    # full-line comments lead the first entry that starts after them
    trailing: list[str] = []
    for lineno, text_ in pending:
        i = bisect.bisect_right(entry_lines, lineno)
        if i < len(entries):
            leads.setdefault(i, []).append(text_)
        else:
            trailing.append(text_)
    header = _tidy(leads.pop(0, [])) if root.kind == "map" and root.items and entries and entries[0][1] is root.items[0][0] else []
    for i, lines in leads.items():
        entries[i][1].leading = _tidy(lines)
    trailing = _tidy(trailing)
    while trailing and trailing[-1] == "":
        trailing.pop()
    return _Source(root, trailing, all_comments, header)


def _strip(node: Node) -> Node:
    """An alias copy: written out, without comments (they stay with the anchor)."""
    node.leading, node.eol = [], []
    if node.kind == "map":
        for k, v in node.items:
            _strip(k)
            _strip(v)
    elif node.kind == "seq":
        for n in node.items:
            _strip(n)
    return node


def _tidy(lines: list[str]) -> list[str]:
    """Drop blank lines before the first comment (and all of them if there is no comment); collapse runs."""
    out: list[str] = []
    for text in lines:
        if text == "" and (not out or out[-1] == ""):
            continue
        out.append(text)
    if not any(out):
        return []
    return out


# --------------------------------------------------------------------------- building (for `new`)


def node_from_data(value: Any, comments: dict[tuple, tuple[list[str], str | None]] | None = None, path: tuple = ()) -> Node:
    """Plain data (dicts, lists, scalars, `Raw` numbers) -> a tree; comments by key path: (leading, eol)."""
    comments = comments or {}
    if isinstance(value, dict):
        node = Node("map", -1)
        for k, v in value.items():
            key = Node("scalar", -1, k, k, True)
            lead, eol = comments.get(path + (k,), ([], None))
            key.leading = list(lead)
            key.eol = [Comment(0, "# " + eol)] if eol else []
            node.items.append((key, node_from_data(v, comments, path + (k,))))
        return node
    if isinstance(value, list):
        node = Node("seq", -1)
        for i, v in enumerate(value):
            item = node_from_data(v, comments, path + (i,))
            lead, eol = comments.get(path + (i,), ([], None))
            item.leading = list(lead)
            item.eol = [Comment(0, "# " + eol)] if eol else []
            node.items.append(item)
        return node
    if isinstance(value, Raw):
        return Node("scalar", -1, value.value, value.text, True)
    return Node("scalar", -1, value, None, True)


def plain_data(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    return value.value if isinstance(value, Raw) else value


# --------------------------------------------------------------------------- writing


def _spath(parent: str, part: str) -> str:
    if part == "[]":
        return parent + "[]"
    return f"{parent}.{part}" if parent else part


def plain_ok(s: str, flow: bool) -> bool:
    if not s or s != s.strip() or not s.isprintable() or s[0] in _INDICATORS:
        return False
    if ": " in s or " #" in s or s.endswith(":") or s.startswith(("---", "...")):
        return False
    if flow and any(c in _FLOW_UNSAFE for c in s):
        return False
    if any(c in "\u2028\u2029\x85\ufeff" for c in s):
        return False
    return resolve_plain(s) == s and isinstance(resolve_plain(s), str)


def double_quoted(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable() or ch in "\u2028\u2029\x85\ufeff":
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else (f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def scalar_text(node: Node, spath: str, flow: bool) -> str:
    v = node.value
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        raw = node.raw
        if raw is not None and node.plain and (_FLOAT.match(raw) or _INF.match(raw) or _NAN.match(raw)):
            return raw
        if v != v:
            return ".nan"
        if v in (float("inf"), float("-inf")):
            return ".inf" if v > 0 else "-.inf"
        return repr(v)
    s = str(v)
    if spath not in QUOTED_PATHS and plain_ok(s, flow):
        return s
    return double_quoted(s)


def _key_text(key: Node, flow: bool) -> str:
    s = str(key.value)
    return s if plain_ok(s, flow) else double_quoted(s)


def _ordered(node: Node, model: Any) -> list[tuple[Node, Node, Any, str]]:
    """(key, value, child model, child schema path part) in canonical order."""
    if isinstance(model, BaseModel):
        fields = list(type(model).model_fields)
        first = ORDER_OVERRIDES.get(type(model).__name__, ())
        order = [f for f in first if f in fields] + [f for f in fields if f not in first]
        rank = {f: i for i, f in enumerate(order)}
        items = sorted(node.items, key=lambda kv: rank.get(kv[0].value, len(rank)))
        return [(k, v, getattr(model, k.value, None), str(k.value)) for k, v in items]
    if isinstance(model, dict):
        return [(k, v, model.get(k.value), "*") for k, v in node.items]
    return [(k, v, None, str(k.value)) for k, v in node.items]


def _children(node: Node, model: Any) -> list[tuple[Node | None, Node, Any, str]]:
    if node.kind == "map":
        return list(_ordered(node, model))
    return [(None, item, model[i] if isinstance(model, (list, tuple)) and i < len(model) else None, "[]")
            for i, item in enumerate(node.items)]


def _flow(node: Node, model: Any, spath: str) -> str:
    if node.kind == "scalar":
        return scalar_text(node, spath, True)
    parts = []
    for key, value, child, part in _children(node, model):
        text = _flow(value, child, _spath(spath, part))
        parts.append(f"{_key_text(key, True)}: {text}" if key is not None else text)
    return ("{" if node.kind == "map" else "[") + ", ".join(parts) + ("}" if node.kind == "map" else "]")


def _descendant_comments(node: Node, model: Any) -> tuple[list[str], list[Comment]]:
    """Leading and end-of-line comments inside a node written on one line, in output order."""
    leading: list[str] = []
    eol: list[Comment] = []
    if node.kind == "scalar":
        return leading, eol
    for key, value, child, _ in _children(node, model):
        entry = key if key is not None else value
        leading += [t for t in entry.leading if t]
        eol += entry.eol
        lv, ev = _descendant_comments(value, child)
        leading += lv
        eol += ev
    return leading, eol


def _with_eol(line: str, eol: list[Comment]) -> str:
    if not eol:
        return line
    text = " ".join(c.text for c in eol)
    col = eol[0].col if eol[0].col >= len(line) + 2 else len(line) + 2
    return line.ljust(col) + text


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def comments(self, texts: list[str], indent: int) -> None:
        for t in texts:
            self.lines.append(" " * indent + t if t else "")

    def mapping(self, node: Node, model: Any, spath: str, indent: int, top: bool = False) -> None:
        for n, (key, value, child, part) in enumerate(_ordered(node, model)):
            cpath = _spath(spath, part)
            block = self._block(value, child, cpath, indent, len(_key_text(key, False)) + 2, top)
            if top and n and block:
                self.lines.append("")
            self.comments(key.leading, indent)
            head = " " * indent + _key_text(key, False) + ":"
            if block:
                self.lines.append(_with_eol(head, key.eol))
                self._block_body(value, child, cpath, indent + INDENT)
            else:
                lead, eol = _descendant_comments(value, child)
                self.comments(lead, indent)
                text = scalar_text(value, cpath, False) if value.kind == "scalar" else _flow(value, child, cpath)
                self.lines.append(_with_eol(head + " " + text, key.eol + eol))

    def sequence(self, node: Node, model: Any, spath: str, indent: int) -> None:
        for item, child in zip(node.items, model if isinstance(model, (list, tuple)) else [None] * len(node.items)):
            cpath = _spath(spath, "[]")
            self.comments(item.leading, indent)
            if self._block(item, child, cpath, indent, 2, False):
                sub = _Writer()
                sub._block_body(item, child, cpath, indent + 2)
                # the first entry's own comments lead / end the dash line
                first = sub._first_content()
                self.comments([ln.strip() for ln in sub.lines[:first] if ln.strip()], indent)
                line = " " * indent + "- " + sub.lines[first][indent + 2:]
                self.lines.append(_with_eol(line, item.eol) if item.eol else line)
                self.lines.extend(sub.lines[first + 1:])
            else:
                lead, eol = _descendant_comments(item, child)
                self.comments(lead, indent)
                text = scalar_text(item, cpath, False) if item.kind == "scalar" else _flow(item, child, cpath)
                self.lines.append(_with_eol(" " * indent + "- " + text, item.eol + eol))

    def _first_content(self) -> int:
        return next(i for i, ln in enumerate(self.lines) if ln.strip() and not ln.lstrip().startswith("#"))

    def _block_body(self, node: Node, model: Any, spath: str, indent: int) -> None:
        if node.kind == "map":
            self.mapping(node, model, spath, indent)
        else:
            self.sequence(node, model, spath, indent)

    def _block(self, node: Node, model: Any, spath: str, indent: int, prefix: int, top: bool) -> bool:
        if node.kind == "scalar" or not node.items:
            return False
        if top or spath in BLOCK_PATHS:
            return True
        return indent + prefix + len(_flow(node, model, spath)) > WIDTH


def emit(root: Node, model: Any, trailing: list[str] = (), header: list[str] = ()) -> str:
    w = _Writer()
    w.comments(list(header), 0)
    w.mapping(root, model, "", 0, top=True)
    if trailing:
        w.comments(list(trailing), 0)
    return "\n".join(w.lines) + "\n"


# --------------------------------------------------------------------------- fmt


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
    source = _parse(text)
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
    kept = _parse(out).comments
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

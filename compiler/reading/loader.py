"""Safe YAML loading that keeps the line and column of every node.

The document is built from ruamel's pure-Python *event* stream rather than its constructors:
no tag is ever honoured (so `!!python/...` cannot construct anything), and every limit (file
size, nesting depth, scalar length, alias expansion) is enforced while parsing, before any
value is built, so an alias bomb fails fast with bounded memory. Plain scalars resolve per the
YAML 1.2 core schema (`yes` is a string, not a bool).
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

from compiler.core.errors import Path, Problem, SpecError

MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000  # after alias expansion
MAX_SCALAR_CHARS = 16_384

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^[-+]?[0-9]+$")
_INT_OCT = re.compile(r"^0o[0-7]+$")
_INT_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")


def resolve_plain(text: str) -> Any:
    """Resolve an untagged plain scalar per the YAML 1.2 core schema."""
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text):
        return int(text)
    if _INT_OCT.match(text):
        return int(text[2:], 8)
    if _INT_HEX.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if _INF.match(text):
        return -math.inf if text.startswith("-") else math.inf
    if _NAN.match(text):
        return math.nan
    return text


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    col: int  # 1-based


@dataclass
class Document:
    """Plain data (dict/list/scalars) plus the position of every value and every key."""

    file: str
    data: Any
    values: dict[Path, Mark] = field(default_factory=dict)
    keys: dict[Path, Mark] = field(default_factory=dict)

    def mark(self, path: Path, *, key: bool = False) -> Mark:
        """The closest known position for `path` (walking up to the nearest ancestor)."""
        table = (self.keys, self.values) if key else (self.values, self.keys)
        for cut in range(len(path), -1, -1):
            for t in table:
                if path[:cut] in t:
                    return t[path[:cut]]
        return Mark(1, 1)

    def problem(self, path: Path, message: str, hint: str | None = None, *, key: bool = False) -> Problem:
        from compiler.core.errors import format_path

        m = self.mark(path, key=key)
        if m.line == 0:  # a value set on the command line
            return Problem("--set", 1, 1, format_path(path), message, hint)
        return Problem(self.file, m.line, m.col, format_path(path), message, hint)


class _Node:
    __slots__ = ("kind", "value", "mark", "size", "height", "open", "items", "key_marks")

    def __init__(self, kind: str, mark: Mark):
        self.kind = kind  # "scalar" | "map" | "seq"
        self.mark = mark
        self.value: Any = None
        self.size = 1
        self.height = 1  # levels of nesting below and including this node, aliases expanded
        self.open = kind != "scalar"  # a collection still being parsed
        self.items: list = []
        self.key_marks: list[Mark] = []


class _Builder:
    def __init__(self, file: str):
        self.file = file
        self.anchors: dict[str, _Node] = {}
        self.expanded = 0

    def fail(self, mark: Mark, message: str, hint: str | None = None, path: str = "<root>") -> None:
        raise SpecError([Problem(self.file, mark.line, mark.col, path, message, hint)])

    @staticmethod
    def _mark(event) -> Mark:
        return Mark(event.start_mark.line + 1, event.start_mark.column + 1)

    def check_tag(self, event) -> None:
        tag = getattr(event, "tag", None)
        if tag not in (None, "!"):
            self.fail(
                self._mark(event),
                f"YAML tag '{tag}' is not allowed",
                "specs are plain data: remove the tag; modelspec never constructs objects from YAML",
            )

    def count(self, n: int, mark: Mark) -> None:
        self.expanded += n
        if self.expanded > MAX_NODES:
            self.fail(
                mark,
                f"document expands to more than {MAX_NODES} nodes",
                "aliases that reference aliases multiply; a spec never needs this many values",
            )

    def build(self, events) -> _Node | None:
        from ruamel.yaml.events import (
            AliasEvent,
            DocumentStartEvent,
            MappingEndEvent,
            MappingStartEvent,
            ScalarEvent,
            SequenceEndEvent,
            SequenceStartEvent,
            StreamEndEvent,
        )

        stack: list[_Node] = []
        root: _Node | None = None
        documents = 0
        for event in events:
            if isinstance(event, DocumentStartEvent):
                documents += 1
                if documents > 1:
                    self.fail(self._mark(event), "more than one YAML document", "a spec is one document: remove '---'")
                continue
            if isinstance(event, StreamEndEvent):
                break
            if isinstance(event, (MappingEndEvent, SequenceEndEvent)):
                done = stack.pop()
                done.open = False
                self._attach(stack, done)
                root = done if not stack else root
                continue
            if isinstance(event, AliasEvent):
                target = self.anchors.get(event.anchor)
                if target is None:
                    self.fail(self._mark(event), f"unknown alias '*{event.anchor}'")
                if target.open:
                    self.fail(self._mark(event), f"alias '*{event.anchor}' refers to a collection that contains it", "recursive aliases are not allowed")
                if len(stack) + target.height > MAX_DEPTH:
                    self.fail(self._mark(event), f"nesting deeper than {MAX_DEPTH} levels (through alias '*{event.anchor}')")
                self.count(target.size, self._mark(event))
                self._attach(stack, target)
                root = target if not stack else root
                continue
            if isinstance(event, (ScalarEvent, MappingStartEvent, SequenceStartEvent)):
                self.check_tag(event)
                mark = self._mark(event)
                if isinstance(event, ScalarEvent):
                    node = _Node("scalar", mark)
                    if len(event.value) > MAX_SCALAR_CHARS:
                        self.fail(mark, f"scalar longer than {MAX_SCALAR_CHARS} characters")
                    if _CONTROL.search(event.value):
                        self.fail(mark, "control characters (NUL, escape, ...) are not allowed in values")
                    node.value = resolve_plain(event.value) if event.style is None else event.value
                    self.count(1, mark)
                else:
                    node = _Node("map" if isinstance(event, MappingStartEvent) else "seq", mark)
                    self.count(1, mark)
                    if len(stack) >= MAX_DEPTH:
                        self.fail(mark, f"nesting deeper than {MAX_DEPTH} levels")
                if event.anchor:
                    self.anchors[event.anchor] = node
                if node.kind == "scalar":
                    self._attach(stack, node)
                    root = node if not stack else root
                else:
                    stack.append(node)
        return root

    def _attach(self, stack: list[_Node], node: _Node) -> None:
        if not stack:
            return
        parent = stack[-1]
        parent.items.append(node)
        parent.size += node.size
        parent.height = max(parent.height, node.height + 1)


def _to_data(node: _Node, path: Path, doc: Document, builder: _Builder, problems: list[Problem]) -> Any:
    from compiler.core.errors import format_path

    doc.values.setdefault(path, node.mark)
    if node.kind == "scalar":
        return node.value
    if node.kind == "seq":
        return [_to_data(child, path + (i,), doc, builder, problems) for i, child in enumerate(node.items)]
    out: dict[str, Any] = {}
    pairs = list(zip(node.items[0::2], node.items[1::2]))
    for key_node, value_node in pairs:
        key = key_node.value
        if key_node.kind != "scalar" or not isinstance(key, str):
            problems.append(
                Problem(doc.file, key_node.mark.line, key_node.mark.col, format_path(path),
                        f"mapping key {key!r} is not a string" if key_node.kind == "scalar" else "mapping key is not a scalar",
                        "quote the key or rename it")
            )
            continue
        if key == "<<":
            problems.append(
                Problem(doc.file, key_node.mark.line, key_node.mark.col, format_path(path + (key,)),
                        "YAML merge keys ('<<') are not allowed", "write the values out; reviewers should see them")
            )
            continue
        if key in out:
            first = doc.keys[path + (key,)]
            problems.append(
                Problem(doc.file, key_node.mark.line, key_node.mark.col, format_path(path + (key,)),
                        f"duplicate key '{key}' (first at line {first.line})", "keep one of them")
            )
            continue
        doc.keys[path + (key,)] = key_node.mark
        out[key] = _to_data(value_node, path + (key,), doc, builder, problems)
    return out


def load_text(text: str, file: str) -> Document:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise SpecError([Problem(file, 1, 1, "<root>", f"file larger than {MAX_FILE_BYTES} bytes", "a spec is a few KiB")])
    bad = _CONTROL.search(text)
    if bad:
        line = text[: bad.start()].count("\n") + 1
        col = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        what = "NUL byte" if bad.group() == "\x00" else f"control character U+{ord(bad.group()):04X}"
        raise SpecError([Problem(file, line, col, "<root>", f"{what} in file", "the file is binary or corrupt; write escapes like \"\\t\" in quoted strings instead")])
    builder = _Builder(file)
    yaml = YAML(typ="safe", pure=True)
    try:
        root = builder.build(yaml.parse(io.StringIO(text)))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise SpecError([Problem(file, line, col, "<root>", f"YAML syntax error: {exc.problem or exc}", "check indentation and quoting")]) from None
    except YAMLError as exc:  # reader errors and the like, without a mark
        raise SpecError([Problem(file, 1, 1, "<root>", f"YAML error: {exc}", "check the file's encoding and characters")]) from None
    except RecursionError:
        raise SpecError([Problem(file, 1, 1, "<root>", f"nesting deeper than {MAX_DEPTH} levels")]) from None
    doc = Document(file=file, data=None)
    if root is None:
        raise SpecError([Problem(file, 1, 1, "<root>", "empty document", "start from specs/toy.yaml")])
    problems: list[Problem] = []
    doc.data = _to_data(root, (), doc, builder, problems)
    if problems:
        raise SpecError(problems)
    if not isinstance(doc.data, dict):
        raise SpecError([Problem(file, 1, 1, "<root>", "a spec must be a mapping at the top level")])
    return doc


def load_file(path: str) -> Document:
    import os

    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise SpecError([Problem(path, 1, 1, "<root>", f"file larger than {MAX_FILE_BYTES} bytes ({size})", "a spec is a few KiB")])
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError([Problem(path, 1, 1, "<root>", f"cannot read spec: {exc.strerror}", "check the path")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError([Problem(path, line, 1, "<root>", "file is not valid UTF-8", "save the spec as UTF-8")]) from None
    return load_text(text, path)

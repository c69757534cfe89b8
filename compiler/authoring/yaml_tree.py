"""A spec's YAML as a node tree with its comments: what `modelspec fmt` re-emits.

ruamel's parser (the same pure event stream the loader reads, on text the safe loader has
already accepted) is walked into a tree that keeps each scalar's source spelling and
position; comments and blank lines are found in the text (a `#` outside every scalar's span,
at a line start or after whitespace) and attached to the entry they belong to:

- a full-line comment leads the next key or list item (so it moves with that key when keys are
  reordered); comments before the first key stay on top, comments after the last entry trail
  the document;
- an end-of-line comment belongs to the outermost key or list item that starts on its line.

Aliases are copied without comments (written out in full). `node_from_data` builds the same
tree from plain data for code that writes a spec (`modelspec new`); `Raw` keeps a number's
chosen spelling there.
"""

from __future__ import annotations

import bisect
import copy
import re
from dataclasses import dataclass, field
from typing import Any

from compiler.reading.loader import resolve_plain


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
class Source:
    root: Node
    trailing: list[str]
    comments: list[str]  # every comment text, in order
    header: list[str] = field(default_factory=list)  # comments before the first key: they stay on top


def parse_tree(text: str) -> Source:
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
    return Source(root, trailing, all_comments, header)


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

"""`--set path=value` overrides, applied to the loaded YAML before validation and recorded."""

from __future__ import annotations

import re
from typing import Any

from compiler.core.errors import Path, Problem, SpecError, did_you_mean, format_path
from compiler.reading.loader import Document, Mark, resolve_plain

_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_path(text: str) -> Path:
    parts: list[str | int] = []
    pos = 0
    for m in _SEGMENT.finditer(text):
        if m.start() != pos and text[pos:m.start()] != ".":
            raise ValueError(text)
        name, index = m.groups()
        parts.append(int(index) if index is not None else int(name) if name.isdigit() else name)
        pos = m.end()
    if pos != len(text) or not parts:
        raise ValueError(text)
    return tuple(parts)


def apply(doc: Document, overrides: list[str]) -> None:
    """Set each `path=value` in `doc.data`; the value is read as a YAML plain scalar."""
    problems = []
    for item in overrides:
        where = Problem("--set", 1, 1, item.partition("=")[0] or "<root>", "", None)
        if "=" not in item:
            problems.append(_p(where, f"override '{item}' is not path=value", "e.g. --set training.optimizer.lr=1e-3"))
            continue
        raw_path, _, raw_value = item.partition("=")
        try:
            path = parse_path(raw_path.strip())
        except ValueError:
            problems.append(_p(where, f"'{raw_path}' is not a key path", "e.g. training.curriculum[0].seq_len"))
            continue
        node: Any = doc.data
        for depth, part in enumerate(path[:-1]):
            node = _child(node, part)
            if node is _MISSING:
                problems.append(_p(where, f"'{format_path(path[: depth + 1])}' does not exist in the spec", None))
                break
        else:
            last = path[-1]
            if isinstance(node, dict) and isinstance(last, str):
                if last not in node:
                    problems.append(_p(where, f"'{format_path(path)}' does not exist in the spec", did_you_mean(last, node)))
                    continue
            elif not (isinstance(node, list) and isinstance(last, int) and last < len(node)):
                problems.append(_p(where, f"'{format_path(path)}' does not exist in the spec", None))
                continue
            node[last] = resolve_plain(raw_value.strip())
            for table in (doc.values, doc.keys):
                for key in [k for k in table if k[: len(path)] == path]:
                    del table[key]
            doc.values[path] = Mark(0, 0)
    if problems:
        raise SpecError(problems)


_MISSING = object()


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict) and isinstance(part, str):
        return node.get(part, _MISSING)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return _MISSING


def _p(where: Problem, message: str, hint: str | None) -> Problem:
    return Problem(where.file, 1, 1, where.path, message, hint)

"""The canonical layout of a spec (docs/authoring.md): a node tree (`yaml_tree.py`) -> text.

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
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from compiler.authoring.yaml_tree import Comment, Node
from compiler.reading.loader import _FLOAT, _INF, _NAN, resolve_plain

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

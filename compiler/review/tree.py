"""The semantic tree diff: what changed between two spec trees, by key path.

Dicts are compared key by key, lists by index except the lists with an identity
(`IDENTITY`: matched by it, with reorders reported) and the lists that are sets (`SETS`).
`overlaps` says whether a key path read by a job or a contract rule covers a change.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

# Lists whose elements have an identity (matched by it, not by index); key paths without indexes.
IDENTITY: dict[tuple[str, ...], tuple[str, ...]] = {
    ("gates",): ("metric", "op"),
    ("quantization", "weights", "rules"): ("match",),
    ("precision", "islands"): ("module", "op"),  # whichever the island has
    ("deployment", "profiles"): ("name",),
}
SETS = {("shapes", "prefill")}  # lists that are sets (ascending and unique by rule)


@dataclass(frozen=True)
class Change:
    path: str  # display path, identity selectors in brackets: gates[metric=...,op=>=].value
    keys: tuple[str, ...]  # the key path without selectors (what READS is matched against)
    old: Any
    new: Any
    kind: str  # changed | added | removed | reordered


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b) and (isinstance(a, bool) or isinstance(b, bool)):
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _join(display: str, key: str) -> str:
    return f"{display}.{key}" if display else key


def _identity(item: Any, fields: tuple[str, ...]) -> tuple | None:
    if not isinstance(item, dict):
        return None
    ident = tuple((f, item[f]) for f in fields if f in item and item[f] is not None)
    return ident or None


_PLAIN = re.compile(r"^[A-Za-z0-9_.*/-]+$")


def _selector(ident: tuple) -> str:
    """`[metric=eval.json_validity,op=">="]`: values other than plain names are JSON-quoted."""
    return "[" + ",".join(f"{k}={v if _PLAIN.match(str(v)) else json.dumps(v)}" for k, v in ident) + "]"


def tree_diff(old: Any, new: Any, keys: tuple[str, ...] = (), display: str = "") -> list[Change]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[Change] = []
        for k in list(old) + [k for k in new if k not in old]:
            if k not in new:
                out.append(Change(_join(display, k), keys + (k,), old[k], None, "removed"))
            elif k not in old:
                out.append(Change(_join(display, k), keys + (k,), None, new[k], "added"))
            else:
                out.extend(tree_diff(old[k], new[k], keys + (k,), _join(display, k)))
        return out
    if isinstance(old, list) and isinstance(new, list):
        if keys in SETS:
            return _set_diff(old, new, keys, display)
        if keys in IDENTITY:
            matched = _identity_diff(old, new, keys, display, IDENTITY[keys])
            if matched is not None:
                return matched
        out = []
        for i in range(max(len(old), len(new))):
            d = f"{display}[{i}]"
            if i >= len(new):
                out.append(Change(d, keys, old[i], None, "removed"))
            elif i >= len(old):
                out.append(Change(d, keys, None, new[i], "added"))
            else:
                out.extend(tree_diff(old[i], new[i], keys, d))
        return out
    if _same(old, new):
        return []
    return [Change(display or "<root>", keys, old, new, "changed")]


def _set_diff(old: list, new: list, keys, display) -> list[Change]:
    out = [Change(f"{display}[{v}]", keys, v, None, "removed") for v in old if v not in new]
    return out + [Change(f"{display}[{v}]", keys, None, v, "added") for v in new if v not in old]


def _identity_diff(old: list, new: list, keys, display, fields) -> list[Change] | None:
    oi, ni = [_identity(x, fields) for x in old], [_identity(x, fields) for x in new]
    if None in oi or None in ni or len(set(oi)) != len(oi) or len(set(ni)) != len(ni):
        return None  # no usable identity (duplicates): fall back to indexes
    old_by, new_by = dict(zip(oi, old)), dict(zip(ni, new))
    out: list[Change] = []
    for ident in oi:
        if ident not in new_by:
            out.append(Change(display + _selector(ident), keys, old_by[ident], None, "removed"))
        else:
            out.extend(tree_diff(old_by[ident], new_by[ident], keys, display + _selector(ident)))
    out += [Change(display + _selector(i), keys, None, new_by[i], "added") for i in ni if i not in old_by]
    common_old = [i for i in oi if i in new_by]
    common_new = [i for i in ni if i in old_by]
    if common_old != common_new:
        out.append(Change(display, keys, [_selector(i)[1:-1] for i in common_old],
                          [_selector(i)[1:-1] for i in common_new], "reordered"))
    return out


def overlaps(read: str | tuple, keys: tuple[str, ...]) -> bool:
    r = tuple(read.split(".")) if isinstance(read, str) else read
    n = min(len(r), len(keys))
    return r[:n] == keys[:n]

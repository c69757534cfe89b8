"""Readable differences between two JSON-like values (status reasons, checkpoint refusals)."""

from __future__ import annotations

import json
from typing import Any


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= 60 else "..."


def diff(old: Any, new: Any, path: str = "") -> list[str]:
    """One line per changed leaf: `a.b: 1 -> 2`, `a.c added`, `a.d removed`."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            sub = f"{path}.{k}" if path else str(k)
            if k not in old:
                out.append(f"{sub} added")
            elif k not in new:
                out.append(f"{sub} removed")
            else:
                out += diff(old[k], new[k], sub)
        return out
    if old != new:
        return [f"{path}: {_show(old)} -> {_show(new)}"]
    return []

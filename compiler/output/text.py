"""Text helpers shared by every emitted file: the jinja2 environment over `templates/`,
Markdown escaping and human-readable sizes. The bottom of `compiler/output/`: it imports
nothing of the compiler, so launch files, the README and the CI templates can all use it.
"""

from __future__ import annotations

import os
import re

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "templates")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|])")


def md(text: object) -> str:
    """Escape Markdown and HTML metacharacters and fold newlines, so user text renders inert."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def human_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    return Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, autoescape=False,
                       keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)

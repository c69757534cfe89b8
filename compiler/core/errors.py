"""Spec problems as data: where (file, line, column, key path), what, and how to fix it.

Every user-facing error in the compiler is a list of `Problem`s wrapped in a `SpecError`, so
that all problems are reported at once and the CLI has one way to print them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Sequence

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """`('training', 'curriculum', 1, 'seq_len')` -> `training.curriculum[1].seq_len`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    col: int
    path: str
    message: str
    hint: str | None = None

    def format(self) -> str:
        head = f"{self.file}:{self.line}:{self.col}: {self.path}: {self.message}"
        return head + (f"\n    hint: {self.hint}" if self.hint else "")

    def as_json(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }


class SpecError(Exception):
    """One or more problems with user input; exit status 2, nothing written."""

    exit_code = 2

    def __init__(self, problems: Sequence[Problem]):
        self.problems = sorted(set(problems), key=lambda p: (p.file, p.line, p.col, p.path, p.message))
        super().__init__("\n".join(p.format() for p in self.problems))


class CheckFailed(Exception):
    """A check said no (stale generated files, a gate, a verification); exit status 1."""

    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None

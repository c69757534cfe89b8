"""Which files `modelspec diff` compares, and loading them (docs/diff.md).

A side is a spec path or `REF:path` (read with `git show`, never a shell); `--base REF`
pairs every spec whose text differs at REF. `load_side` validates and compiles one side,
`load_pair` both, with the problems of both in one SpecError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from compiler.core.errors import Problem, SpecError


@dataclass(frozen=True)
class Side:
    source: str  # what the user wrote: a path or REF:path
    path: str  # the spec's path in the working tree (data paths resolve against its folder)
    ref: str | None
    text: str | None  # the REF side's text (None: read from path)


def parse_side(arg: str) -> Side:
    """A file that exists is a file; otherwise `REF:path` when there is a colon."""
    if os.path.exists(arg) or ":" not in arg:
        return Side(arg, arg, None, None)
    ref, _, path = arg.partition(":")
    return Side(arg, path, ref, None)


def _git(args: list[str], cwd: str):
    import subprocess  # only REF sides pay for it

    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=60)


def git_toplevel(cwd: str = ".") -> str:
    import subprocess

    try:
        out = _git(["rev-parse", "--show-toplevel"], cwd)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SpecError([Problem("<git>", 1, 1, "<root>", f"cannot run git: {exc}", "install git")]) from None
    if out.returncode != 0:
        raise SpecError([Problem("<git>", 1, 1, "<root>", "not inside a git repository",
                                 "REF:path and --base read specs from git; run modelspec diff inside the repository")])
    return out.stdout.decode().strip()


def git_show(ref: str, path: str) -> str | None:
    """The text of `path` (a working-tree path) at `ref`; None when the ref lacks the file.

    `git show REF:path` with an argument list (never a shell); a bad ref is a SpecError."""
    label = f"{ref}:{path}"
    if not ref or ref.startswith("-") or any(c in ref for c in "\0\n"):
        raise SpecError([Problem(label, 1, 1, "<root>", f"'{ref}' is not a git ref", "e.g. origin/main:specs/toy.yaml")])
    top = git_toplevel(os.path.dirname(os.path.abspath(path)) if os.path.isdir(os.path.dirname(os.path.abspath(path))) else ".")
    rel = os.path.relpath(os.path.abspath(path), top).replace(os.sep, "/")
    if rel.startswith("../"):
        raise SpecError([Problem(label, 1, 1, "<root>", f"{path} is outside the git repository {top}", None)])
    check = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], top)
    if check.returncode != 0:
        raise SpecError([Problem(label, 1, 1, "<root>", f"unknown git ref '{ref}'",
                                 "name a branch, tag or commit that exists locally (git fetch first for origin/...)")])
    out = _git(["show", f"{check.stdout.decode().strip()}:{rel}"], top)
    if out.returncode != 0:
        return None
    try:
        return out.stdout.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError([Problem(label, 1, 1, "<root>", "file is not valid UTF-8", "save the spec as UTF-8")]) from None


def load_side(side: Side):
    """Validate and compile one side (SpecError on any problem)."""
    from compiler.planning.compile import compile_spec
    from compiler.reading.loader import load_text
    from compiler.reading.validate import Validated, validate_doc, validate_file

    if side.ref is None:
        validated = validate_file(side.path)
    else:
        text = side.text if side.text is not None else git_show(side.ref, side.path)
        if text is None:
            raise SpecError([Problem(side.source, 1, 1, "<root>", f"'{side.path}' does not exist at {side.ref}",
                                     "check the path (relative to the current folder) and the ref")])
        doc = load_text(text, side.source)
        spec = validate_doc(doc, os.path.dirname(os.path.abspath(side.path)))
        validated = Validated(spec, doc, side.path, ())
    return compile_spec(validated)


def load_pair(old: Side, new: Side):
    """Both sides, or one SpecError with the problems of both."""
    problems: list[Problem] = []
    out = []
    for side in (old, new):
        try:
            out.append(load_side(side))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    return out[0], out[1]


def base_sides(ref: str, paths: list[str]) -> tuple[list[tuple[Side, Side]], list[str], list[str]]:
    """(old, new) for every spec whose text differs at `ref`; the specs new and removed since `ref`."""
    pairs, new_specs, removed_specs, missing = [], [], [], []
    for path in paths:
        text = git_show(ref, path)
        if not os.path.exists(path):
            (missing if text is None else removed_specs).append(path)
            continue
        if text is None:
            new_specs.append(path)
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                current = fh.read()
        except (OSError, UnicodeDecodeError):
            current = None  # the new side's own load reports it
        if current == text:
            continue
        pairs.append((Side(f"{ref}:{path}", path, ref, text), Side(path, path, None, None)))
    if missing:
        raise SpecError([Problem(p, 1, 1, "<root>", f"no such spec, neither in the working tree nor at {ref}", "check the path")
                         for p in missing])
    return pairs, new_specs, removed_specs

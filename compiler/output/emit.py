"""Write generated files atomically, or compare them with what is on disk (`--check`).

Everything is rendered in memory first; a folder is replaced by renaming a complete sibling
into place, so a failed compile writes nothing and an interrupted one leaves the old folder.
Nothing is written outside the output root.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from compiler.core.canonical import pretty_json

SCHEMA_FILE = "modelspec.schema.json"


def schema_text() -> str:
    from compiler.output.schema_rules import add_rules
    from compiler.schema.spec import Spec

    schema = add_rules(Spec.model_json_schema())
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "modelspec v1"
    return pretty_json(schema)


def _inside(root: str, path: str) -> str:
    root_abs = os.path.realpath(root)
    full = os.path.realpath(os.path.join(root_abs, path))
    if os.path.commonpath([root_abs, full]) != root_abs:
        raise ValueError(f"refusing to write outside {root}: {path}")
    return full


def write_folder(root: str, name: str, files: dict[str, str]) -> str:
    os.makedirs(root, exist_ok=True)
    target = _inside(root, name)
    staging = tempfile.mkdtemp(prefix=f".{name}.", dir=os.path.realpath(root))
    try:
        for rel, text in sorted(files.items()):
            path = _inside(staging, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
        old = None
        if os.path.lexists(target):
            if os.path.islink(target) or not os.path.isdir(target):
                raise ValueError(f"{target} exists and is not a folder")
            old = tempfile.mkdtemp(prefix=f".{name}.old.", dir=os.path.realpath(root))
            os.rename(target, os.path.join(old, name))
        os.rename(staging, target)
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_file(root: str, rel: str, text: str) -> None:
    os.makedirs(root, exist_ok=True)
    path = _inside(root, rel)
    fd, tmp = tempfile.mkstemp(prefix=f".{rel}.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def stale_files(root: str, name: str, files: dict[str, str], extra: bool = True) -> list[str]:
    """Files under `root/name` that differ from `files`, are missing, or (extra=True) should not be there."""
    folder = os.path.join(root, name)
    stale = []
    for rel, text in sorted(files.items()):
        path = os.path.join(folder, rel)
        try:
            with open(path, encoding="utf-8", newline="") as fh:
                if fh.read() != text:
                    stale.append(path)
        except OSError:
            stale.append(path)
    if extra and os.path.isdir(folder):
        for dirpath, _, names in os.walk(folder):
            for n in names:
                rel = os.path.relpath(os.path.join(dirpath, n), folder).replace(os.sep, "/")
                if rel not in files:
                    stale.append(os.path.join(folder, rel))
    return sorted(stale)


def stale_schema(root: str) -> list[str]:
    path = os.path.join(root, SCHEMA_FILE)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return [] if fh.read() == schema_text() else [path]
    except OSError:
        return [path]

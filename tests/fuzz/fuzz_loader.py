"""atheris (libFuzzer) target for the spec loader and validator: any bytes give a `SpecError`
or a valid spec, never another exception.

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/fuzz_loader.py -atheris_runs=200000 specs/   # seeds from the specs

tests/fuzz/test_atheris.py runs it briefly when atheris is installed (it is not a test dependency).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from compiler.core.errors import SpecError
    from compiler.reading.loader import load_text
    from compiler.reading.validate import validate_doc

SPEC_DIR = str(Path(__file__).resolve().parents[2] / "specs")


def one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # files are decoded by the loader, which reports invalid UTF-8 itself (test_loader_limits)
    try:
        validate_doc(load_text(text, "fuzz.yaml"), SPEC_DIR)
    except SpecError as exc:
        if not exc.problems or any(p.line < 1 or p.col < 1 for p in exc.problems):
            raise AssertionError(f"a spec error without a position: {exc.problems}") from exc


def main(argv: list[str]) -> None:
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

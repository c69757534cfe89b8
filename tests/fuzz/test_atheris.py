"""A short atheris run of the loader target (skipped when atheris is not installed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")
ROOT = Path(__file__).resolve().parents[2]


def test_the_loader_survives_a_short_coverage_guided_fuzz(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for spec in (ROOT / "specs").glob("*.yaml"):
        (corpus / spec.name).write_bytes(spec.read_bytes())
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz" / "fuzz_loader.py"), "-atheris_runs=3000",
                           "-max_len=4096", str(corpus)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
